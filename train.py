"""
Pretrain (or finetune) a GPT-2 with one of the six PHF objectives: mle, filter, cond, ul, awr, rwr.

    python train.py config/pep8_cond.py                          # one process (GPU if there is one, else CPU)
    python train.py config/pep8_cond.py config/cpu_small.py      # config files apply left to right
    python train.py config/pep8_cond.py --batch_size=8 --compile=False
    python train.py config/pep8_cond.py --resume=True            # continue from out_dir/ckpt.pt
    python train.py config/pep8_cond.py --overwrite=True         # start again, deleting the run in out_dir
    torchrun --standalone --nproc_per_node=8 train.py config/toxicity_mle.py
    torchrun --nnodes=2 --node_rank=0 --nproc_per_node=8 --master_addr=HOST --master_port=29500 train.py ...

Config files are short Python files of assignments to the keys of settings.TrainConfig, and they run as code (as
nanoGPT's configurator's do): use only config files you trust. `--key=value` overrides them; its values are parsed as
literals, never run.
SIGTERM (a preempted job) or Ctrl-C ends the current step, saves a checkpoint and exits with status 128 + the signal;
--resume=True continues the run where it stopped. A second Ctrl-C stops at once.
"""
import math
import os
import shlex
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import data
import devices
import hf
import objectives
import transforms
from checkpoints import CheckpointError, read_checkpoint, rng_state, save_checkpoint, set_rng_state
from model import GPT, GPTConfig
from runs import (RunLog, Stopped, StopSignals, TrainingError, check_out_dir, checkpoint_to_resume, claim_out_dir,
                  data_fingerprints, divergence_error, evaluated, max_over_ranks, prepare_out_dir, release_out_dir)
from scorers import ScorerError
from settings import (ConfigError, EvalError, TrainConfig, check_data_dir, check_eval_settings, keep_steps,
                      load_config, settings_help, steps_in_budget)

# ----------------------------------------------------------------------------------------------------------------
# Pieces of the loop

def compute_loss(cfg, model, x, y, rewards):
    """The method's objective on one micro-batch. With loss_chunk_size > 0 the model returns its final hidden states
    and the objective computes log-probs from them and lm_head.weight in chunks (objectives.ChunkedLogits)."""
    chunked = cfg.loss_chunk_size > 0
    outputs = model(x, return_hidden=chunked)
    logits, values = outputs if data.METHODS[cfg.method].value_head else (outputs, None)
    if chunked:
        logits = objectives.ChunkedLogits(logits, model.lm_head.weight, cfg.loss_chunk_size)
    if cfg.method in ('awr', 'rwr'):
        alpha = 1.0 if cfg.method == 'rwr' else cfg.awr_alpha
        return objectives.awr(logits, values, y, rewards, alpha, cfg.awr_beta, cfg.awr_clip_weight_max)
    if cfg.method == 'ul':
        return objectives.unlikelihood(logits, y, rewards, cfg.ul_threshold, cfg.ul_alpha, soft=cfg.ul_soft)
    if cfg.method == 'mask':
        return objectives.masked_mle(logits, y, rewards, cfg.cond_threshold)
    return objectives.mle(logits, y)  # mle, and filter/cond whose work is done in the data


class ModelWithLoss(torch.nn.Module):
    """compute_loss as a module: torch.compile then takes the model and the objective as one graph (no eager
    cross-entropy over the (B, T, vocab) logits), and DDP wraps both."""

    def __init__(self, cfg, model):
        super().__init__()
        self.cfg, self.model = cfg, model

    def forward(self, x, y, rewards):
        return compute_loss(self.cfg, self.model, x, y, rewards)


def get_lr(cfg, step, max_steps):
    warmup = int(cfg.warmup_frac * max_steps)
    if step < warmup:
        return cfg.learning_rate * (step + 1) / warmup
    progress = (step - warmup) / max(1, max_steps - warmup)
    if cfg.lr_schedule == 'cosine':
        return cfg.min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (cfg.learning_rate - cfg.min_lr)
    return cfg.min_lr + (1 - progress) * (cfg.learning_rate - cfg.min_lr)


def build_model(cfg, ckpt):
    """The model to train: from the checkpoint being resumed, from one of ours (finetuning), from a Hugging Face
    GPT-2 (a directory or a hub name, the paper's released models included: hf.py), or from scratch. AWR and RWR get
    a value head. A conditional run from a model trained without control tokens starts their rows afresh."""
    value_head = data.METHODS[cfg.method].value_head
    init_seed = cfg.seed + cfg.init_seed_offset
    torch.manual_seed(init_seed)  # the same initial weights on every rank
    if ckpt is not None:
        model = GPT(GPTConfig(**ckpt['model_args']))
        model.load_state_dict(ckpt['model'])
        return model
    if cfg.init_from == 'scratch':
        return GPT(GPTConfig(block_size=cfg.block_size, vocab_size=data.VOCAB_SIZE, n_layer=cfg.n_layer,
                             n_head=cfg.n_head, n_embd=cfg.n_embd, dropout=cfg.dropout, bias=cfg.bias,
                             value_head=value_head))
    if cfg.init_from.endswith('.pt'):
        src = read_checkpoint(cfg.init_from)
        args = dict(src['model_args'], value_head=value_head, dropout=cfg.dropout)
        model = GPT(GPTConfig(**args))
        state = {k: v for k, v in src['model'].items() if not k.startswith('value_head')}
        missing, _ = model.load_state_dict(state, strict=False)
        assert all(k.startswith('value_head') for k in missing), missing  # a new value head starts at zero
        source_method = src['config']['method']
    else:  # GPT-2's own rows are copied; ours it lacks start at their mean plus noise (§1.3)
        model = hf.from_pretrained(cfg.init_from, value_head=value_head, block_size=cfg.block_size,
                                   dropout=cfg.dropout, seed=init_seed)
        source_method = hf.RELEASED.get(cfg.init_from, ('', 'cond'))[1]  # else: unknown, its rows are kept
    if data.METHODS[cfg.method].conditional and not data.METHODS[source_method].conditional:
        # the control tokens are new to this model: start their rows at the mean row plus noise (§1.3)
        with torch.no_grad():
            wte = model.transformer.wte.weight
            g = torch.Generator().manual_seed(init_seed)
            mean = wte[:data.EOS + 1].mean(0)
            wte[data.ALIGNED:data.MISALIGNED + 1] = mean + 0.01 * torch.randn(2, wte.size(1), generator=g)
    return model


# ----------------------------------------------------------------------------------------------------------------
# Before the first step: the plan, the checks that would otherwise fail hours later, the data

def plan_steps(cfg, world):
    """(micro-batches per step and process, tokens per step, steps in the budget)."""
    if cfg.total_batch_size % (cfg.batch_size * world):
        raise ConfigError(f"total_batch_size {cfg.total_batch_size} is not a multiple of batch_size "
                          f"{cfg.batch_size} × {world} processes")
    grad_accum = cfg.total_batch_size // (cfg.batch_size * world)
    tokens_per_step = cfg.total_batch_size * cfg.block_size
    max_steps = steps_in_budget(cfg)
    if max_steps < 1:
        raise ConfigError(f"max_tokens {cfg.max_tokens} is less than one step of {tokens_per_step} tokens")
    return grad_accum, tokens_per_step, max_steps


def resolve_dtype(cfg, device_type):
    """dtype 'auto' set to what it means on the device (bf16 where it is native), as the checkpoint records it."""
    if cfg.dtype == 'auto':
        cfg.dtype = devices.default_dtype(device_type)


def autocast_context(cfg, device_type):
    """The context of the forward passes in cfg.dtype (resolved: resolve_dtype), and the device's settings for it."""
    if device_type == 'cuda':
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        devices.keep_freed_memory()
    return nullcontext() if cfg.dtype == 'float32' else torch.autocast(device_type, dtype=getattr(torch, cfg.dtype))


def training_split(cfg, ddp, master, rank):
    """The split the method trains on: filtering and conditional training transform the prepared split once (rank
    0), cached on disk."""
    split_dir = os.path.join(cfg.data_dir, cfg.task, 'train')
    kwargs = dict(filter_threshold=cfg.filter_threshold, cond_threshold=cfg.cond_threshold,
                  drop_token_fraction=cfg.drop_token_fraction, cond_bins=cfg.cond_bins, seed=cfg.seed)
    if master:
        train_data = transforms.for_method(split_dir, cfg.method, **kwargs)
    if ddp:
        dist.barrier()
    if not master:
        train_data = transforms.for_method(split_dir, cfg.method, rank=rank, **kwargs)
    return train_data


def restore_state(ckpt, optimizer, scaler, rank):
    """The optimizer, loss scaler and RNG states of a resumed run; its (step, tokens_seen)."""
    optimizer.load_state_dict(ckpt['optimizer'])
    if ckpt['scaler']:  # empty when saved without float16 (a disabled scaler)
        scaler.load_state_dict(ckpt['scaler'])
    set_rng_state(ckpt['rng'][rank] if rank < len(ckpt['rng']) else ckpt['rng'][0])
    return ckpt['step'], ckpt['tokens_seen']


def wrap_model(cfg, raw_model, ddp, device_type):
    """The model with its loss (ModelWithLoss), compiled as one graph (by default on CUDA), under DDP."""
    model = ModelWithLoss(cfg, raw_model)
    if cfg.compile if cfg.compile is not None else device_type == 'cuda':
        model = torch.compile(model)
    if ddp:
        model = DDP(model, device_ids=[int(os.environ['LOCAL_RANK'])] if device_type == 'cuda' else None)
    return model


# ----------------------------------------------------------------------------------------------------------------
# The loop

def train(cfg):
    ddp = int(os.environ.get('RANK', -1)) != -1
    if cfg.device == 'auto':
        cfg.device = devices.default_device()
    if ddp:
        devices.init_process_group('nccl' if cfg.device.startswith('cuda') else 'gloo')
        rank, world = dist.get_rank(), dist.get_world_size()
        if cfg.device.startswith('cuda'):
            cfg.device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
            torch.cuda.set_device(cfg.device)
    else:
        rank, world = 0, 1
    master = rank == 0
    device_type = 'cuda' if cfg.device.startswith('cuda') else 'cpu'
    stop = StopSignals(ddp, cfg.device)
    try:
        result = _train(cfg, ddp, rank, world, device_type, stop)
        if ddp:  # leave together: a rank that tears the group down while rank 0 still saves can abort it (gloo)
            dist.barrier()
        return result
    finally:
        stop.uninstall()
        if master:
            release_out_dir(cfg.out_dir)
        if ddp:
            dist.destroy_process_group()


@dataclass
class Run:
    """What a training run holds while it trains: its plan, data, model and optimizer, and where it is."""
    cfg: TrainConfig
    ddp: bool
    rank: int
    world: int
    device_type: str
    grad_accum: int
    tokens_per_step: int
    max_steps: int
    ctx: object  # the autocast context of the forward passes
    ckpt_path: str
    wants_eval: bool
    train_data: data.PreparedData
    loader: data.BlockLoader
    raw_model: GPT
    model: torch.nn.Module  # raw_model with its loss, compiled and wrapped for DDP as configured
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    log: RunLog
    data_identity: dict  # the splits' fingerprints, which a resume must find again
    kept_steps: set  # steps whose checkpoint is also kept as ckpt_step{N}.pt
    step: int = 0
    tokens_seen: int = 0
    saved_step: int = None

    @property
    def master(self):
        return self.rank == 0


def setup(cfg, ddp, rank, world, device_type):
    """Every check that would otherwise fail later, then the data, the model and optimizer (from the checkpoint of a
    resumed run), and out_dir claimed for this run."""
    grad_accum, tokens_per_step, max_steps = plan_steps(cfg, world)
    resolve_dtype(cfg, device_type)
    ctx = autocast_context(cfg, device_type)
    ckpt_path = os.path.join(cfg.out_dir, 'ckpt.pt')
    check_out_dir(cfg, ckpt_path)
    check_data_dir(cfg)
    master = rank == 0
    data_identity = data_fingerprints(cfg)
    ckpt = checkpoint_to_resume(cfg, ckpt_path, max_steps, master, data_identity) if cfg.resume else None
    wants_eval = bool(cfg.eval_iters or cfg.eval_samples or cfg.kl_reference)
    if wants_eval:
        check_eval_settings(cfg)
    train_data = training_split(cfg, ddp, master, rank)
    loader = data.BlockLoader(train_data, cfg.block_size, cfg.batch_size, seed=cfg.seed,
                              offset=cfg.skip_tokens // cfg.block_size)
    model = build_model(cfg, ckpt).to(cfg.device)
    if model.config.block_size < cfg.block_size:
        raise ConfigError(f"block_size {cfg.block_size} > the model's {model.config.block_size}")
    optimizer = model.configure_optimizer(cfg.weight_decay, cfg.learning_rate, (cfg.beta1, cfg.beta2), device_type)
    scaler = torch.amp.GradScaler(device_type, enabled=cfg.dtype == 'float16')
    step, tokens_seen, saved_step, wandb_run_id = 0, 0, None, None
    if ckpt is not None:
        step, tokens_seen = restore_state(ckpt, optimizer, scaler, rank)
        saved_step, wandb_run_id = step, ckpt.get('wandb_run_id')
        del ckpt
    else:
        torch.manual_seed(cfg.seed + rank)  # dropout differs across ranks
    wrapped = wrap_model(cfg, model, ddp, device_type)
    if master:  # every check has passed: out_dir may change
        claim_out_dir(cfg.out_dir)
        prepare_out_dir(cfg, step)
    return Run(cfg=cfg, ddp=ddp, rank=rank, world=world, device_type=device_type, grad_accum=grad_accum,
               tokens_per_step=tokens_per_step, max_steps=max_steps, ctx=ctx, ckpt_path=ckpt_path,
               wants_eval=wants_eval, train_data=train_data, loader=loader, raw_model=model, model=wrapped,
               optimizer=optimizer, scaler=scaler, log=RunLog(cfg, master, wandb_run_id), data_identity=data_identity,
               kept_steps=keep_steps(cfg), step=step, tokens_seen=tokens_seen, saved_step=saved_step)


def announce(run):
    """The run's plan, in one line; a warning when the budget repeats the data."""
    cfg = run.cfg
    if run.master:
        print(f"{cfg.task}/{cfg.method}: {run.raw_model.num_params() / 1e6:.2f}M parameters, {run.max_steps} steps "
              f"of {run.tokens_per_step} tokens ({run.grad_accum} micro-batches × {cfg.batch_size} × {run.world} "
              f"processes), {run.train_data.n_tokens:,} training tokens ({run.loader.n_blocks:,} blocks), "
              f"{cfg.device} {cfg.dtype}", flush=True)
        epochs = run.max_steps * cfg.total_batch_size / run.loader.n_blocks
        if epochs > 1:  # repeated data overfits, filtering's most (docs/evaluation.md, measuring at small scale)
            print(f"warning: the budget is {epochs:.1f} passes over the training data", flush=True)


def train_step(run, lr):
    """One optimizer step at learning rate lr over the step's micro-batches; the summed loss (a tensor: no host
    sync)."""
    cfg = run.cfg
    for group in run.optimizer.param_groups:
        group['lr'] = lr
    loss_sum = torch.zeros((), device=cfg.device)
    for micro in range(run.grad_accum):
        x, y, r = run.loader.get((run.step * run.grad_accum + micro) * run.world + run.rank, cfg.device)
        sync = not run.ddp or micro == run.grad_accum - 1  # all-reduce gradients once per step
        with (nullcontext() if sync else run.model.no_sync()), run.ctx:
            loss = run.model(x, y, r) / run.grad_accum
        run.scaler.scale(loss).backward()
        loss_sum += loss.detach()
    if cfg.grad_clip > 0:
        run.scaler.unscale_(run.optimizer)
        torch.nn.utils.clip_grad_norm_(run.raw_model.parameters(), cfg.grad_clip)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    return loss_sum


class Timer:
    """Tokens/s since the last log line, and the time left: the steps left at the pace of the run's latest stretch,
    its last RECENT share of steps (at least the last lap), so that a slow start (a compile, a run beside it still
    starting) does not weigh on the estimate for the rest of the run."""
    RECENT = 0.05

    def __init__(self, step, clock=time.time):
        self.clock = clock
        self.t0 = self.t_start = clock()
        self.steps, self.start_step = 0, step
        self.laps = [(self.t0, step)]  # (time, step) of the laps within the recent stretch, and the last one before

    def lap(self, run):
        """(tokens/s since the last lap, seconds left)."""
        now = self.clock()
        tok_s = run.tokens_per_step * self.steps / (now - self.t0)
        window = self.RECENT * run.max_steps
        self.laps = [lap for lap in self.laps if run.step - lap[1] <= window] or self.laps[-1:]
        t_from, step_from = self.laps[0]
        eta = (run.max_steps - run.step) * (now - t_from) / (run.step - step_from)
        self.laps.append((now, run.step))
        self.t0, self.steps = now, 0
        return tok_s, eta


def log_step(run, loss_sum, nonfinite, lr, timer, peak):
    """The step's line and record; a non-finite loss (on any rank) stops the run before anything is saved."""
    if run.ddp:
        dist.all_reduce(loss_sum)  # gloo has no AVG
        loss_sum /= run.world
    loss_value = loss_sum.item()
    if max_over_ranks(nonfinite, run.ddp) or not math.isfinite(loss_value):
        where = f"at step {run.step}" if not math.isfinite(loss_value) else f"before step {run.step}"
        raise divergence_error(run.cfg, where, run.ckpt_path, run.saved_step)
    tok_s, eta = timer.lap(run)
    mfu = run.raw_model.flops_per_token() * tok_s / (peak * run.world) if peak else None
    run.log(dict(step=run.step, loss=loss_value, lr=lr, tokens=run.tokens_seen, tokens_per_s=tok_s, mfu=mfu,
                 epoch=run.loader.epoch_of(run.step * run.grad_accum * run.world)))
    if run.master:  # after the record: repro.py reads the step from log.jsonl when it sees this line
        print(f"step {run.step}/{run.max_steps} loss {loss_value:.4f} lr {lr:.2e} {tok_s:,.0f} tok/s"
              + (f" mfu {100 * mfu:.1f}%" if mfu else '') + f" eta {eta / 60:.1f} min", flush=True)


def save(run):
    """The run's checkpoint (and ckpt_step{N}.pt where kept): every rank's RNG state, written by rank 0."""
    micro_batch = run.step * run.grad_accum * run.world
    state = dict(model=run.raw_model.state_dict(), optimizer=run.optimizer.state_dict(),
                 scaler=run.scaler.state_dict(), model_args=asdict(run.raw_model.config), config=asdict(run.cfg),
                 step=run.step, tokens_seen=run.tokens_seen,
                 data_position=dict(micro_batch=micro_batch, epoch=run.loader.epoch_of(micro_batch)),
                 data=run.data_identity, rng=gathered_rng(run), wandb_run_id=run.log.wandb_run_id)
    if run.master:
        save_checkpoint(run.ckpt_path, state)
        if run.step in run.kept_steps:
            save_checkpoint(os.path.join(run.cfg.out_dir, f"ckpt_step{run.step}.pt"), state)
    run.saved_step = run.step


def gathered_rng(run):
    if not run.ddp:
        return [rng_state()]
    states = [None] * run.world
    dist.all_gather_object(states, rng_state())
    return states


def eval_due(run):
    """The final step is always evaluated, after a checkpoint of the same step."""
    cfg = run.cfg
    return run.wants_eval and (run.step == run.max_steps or (cfg.eval_interval and run.step % cfg.eval_interval == 0))


def evaluate_run(run):
    """evaluate.evaluate on rank 0 (the others wait): on a CPU in fp32 whatever the training dtype, as evaluate.py
    does, so that the figures do not depend on the CPU."""
    import evaluate as ev
    if run.master:
        ctx = run.ctx if run.device_type == 'cuda' else nullcontext()
        result = ev.evaluate(run.raw_model, run.cfg, run.step, run.tokens_seen, run.cfg.device, ctx)
        print(f"eval step {run.step}: " + ', '.join(f"{k} {v:.4g}" for k, v in result.items()
                                                     if isinstance(v, float)), flush=True)
        run.log(dict(result, step=run.step, tokens=run.tokens_seen, kind='eval'))
    if run.ddp:
        dist.barrier()


def _train(cfg, ddp, rank, world, device_type, stop):
    run = setup(cfg, ddp, rank, world, device_type)
    announce(run)
    if run.step and eval_due(run) and not evaluated(cfg.out_dir, run.step):  # it failed, or was killed, before
        evaluate_run(run)
    peak = devices.peak_flops(cfg.device)
    nonfinite = torch.zeros((), dtype=torch.bool, device=cfg.device)
    timer = Timer(run.step)
    stop.install()
    while run.step < run.max_steps:
        lr = get_lr(cfg, run.step, run.max_steps)
        loss_sum = train_step(run, lr)
        nonfinite |= ~torch.isfinite(loss_sum)  # checked at log/checkpoint time: no host sync per step
        run.step += 1
        run.tokens_seen += run.tokens_per_step
        timer.steps += 1
        last = run.step == run.max_steps
        if run.step % cfg.log_interval == 0 or last:
            log_step(run, loss_sum, nonfinite, lr, timer, peak)
        stopping = stop.received()
        if run.step % cfg.ckpt_interval == 0 or last or run.step in run.kept_steps or eval_due(run) or stopping:
            if max_over_ranks(nonfinite, ddp):  # never save, nor evaluate, diverged weights
                raise divergence_error(cfg, f"at or before step {run.step}", run.ckpt_path, run.saved_step)
            save(run)
        if stopping:
            raise Stopped(stopping, f"{signal.Signals(stopping).name} at step {run.step}; {run.ckpt_path} holds it")
        if eval_due(run):
            evaluate_run(run)
    run.log.close()
    if run.master:
        print(f"done: {run.max_steps} steps, {run.tokens_seen:,} tokens, {(time.time() - timer.t_start) / 60:.1f} "
              f"min; checkpoint {run.ckpt_path}", flush=True)
    return run.raw_model


def resume_command(argv):
    """The command that continues this run."""
    args = [shlex.quote(a) for a in argv if not a.startswith(('--resume=', '--overwrite='))]
    return ' '.join(['python train.py'] + args + ['--resume=True'])


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if {'-h', '--help'} & set(argv):
        print(f"{__doc__.strip()}\n\nThe settings (settings.TrainConfig), with their defaults:\n\n{settings_help()}")
        return
    try:
        cfg = load_config(argv)
        train(cfg)
    except (ConfigError, CheckpointError, data.DataError, TrainingError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except Stopped as e:
        print(f"stopped by {e}; continue the run with: {resume_command(argv)}", file=sys.stderr)
        sys.exit(128 + e.signum)
    except (EvalError, ScorerError) as e:  # an evaluation (a scorer without weights, a KL server down): saved before
        ckpt = os.path.join(cfg.out_dir, 'ckpt.pt')
        print(f"error during evaluation: {e}\nthe weights it evaluated are saved in {ckpt}; fix the cause, then "
              f"run the evaluation with `{resume_command(argv)}` (a run not finished then trains on) or with "
              f"`python evaluate.py --ckpt={ckpt}`", file=sys.stderr)
        sys.exit(1)


if __name__ == '__main__':
    main()
