"""
Pretrain (or finetune) a GPT-2 with one of the six PHF objectives: mle, filter, cond, ul, awr, rwr.

    python train.py config/pep8_cond.py                          # one process (GPU if there is one, else CPU)
    python train.py config/pep8_cond.py config/cpu_small.py      # config files apply left to right
    python train.py config/pep8_cond.py --batch_size=8 --compile=False
    python train.py config/pep8_cond.py --resume=True            # continue from out_dir/ckpt.pt
    torchrun --standalone --nproc_per_node=8 train.py config/toxicity_mle.py
    torchrun --nnodes=2 --node_rank=0 --nproc_per_node=8 --master_addr=HOST --master_port=29500 train.py ...

Config files are short Python files of assignments to the keys of TrainConfig; `--key=value` overrides them.
"""
import ast
import json
import math
import os
import random
import sys
import time
import typing
from contextlib import nullcontext
from dataclasses import dataclass, asdict, fields
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import data
import objectives
from model import GPT, GPTConfig, keep_freed_memory

METHODS = ('mle', 'filter', 'cond', 'ul', 'awr', 'rwr')


@dataclass
class TrainConfig:
    # what to train
    task: str = 'pep8'  # a key of data.TASKS
    method: str = 'mle'  # one of METHODS
    data_dir: str = 'data'  # prepared splits are read from data_dir/task/{train,val}
    out_dir: str = 'out'
    init_from: str = 'scratch'  # 'scratch', a ckpt.pt of ours (finetuning), or a Hugging Face GPT-2 (dir or hub name)
    resume: bool = False  # continue the run in out_dir from its ckpt.pt
    skip_tokens: int = 0  # start this far into the data order (finetuning continues where pretraining stopped)
    # model
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    block_size: int = 1024
    dropout: float = 0.0
    bias: bool = True
    # method hyperparameters; None takes the task's value from data.TASKS
    filter_threshold: Optional[float] = None
    cond_threshold: Optional[float] = None
    drop_token_fraction: Optional[float] = None
    ul_threshold: Optional[float] = None
    ul_soft: Optional[bool] = None
    ul_alpha: float = 1.0
    awr_alpha: float = 0.5
    awr_beta: float = 1.0
    awr_clip_weight_max: float = 1000.0
    # optimisation (HF Trainer defaults of the original, reference §4)
    max_tokens: int = 3_300_000_000  # the budget; max_steps = max_tokens // (total_batch_size · block_size)
    batch_size: int = 16  # sequences per micro-batch per process
    total_batch_size: int = 64  # sequences per optimizer step over all processes (the paper's effective batch)
    learning_rate: float = 5e-4
    min_lr: float = 0.0
    lr_schedule: str = 'linear'  # 'linear' or 'cosine' decay after warm-up
    warmup_frac: float = 0.01
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.999
    grad_clip: float = 1.0
    # system
    device: str = 'auto'  # 'auto', 'cpu', 'cuda', 'cuda:1', ...
    dtype: str = 'auto'  # 'auto' (bf16 if supported, else fp16 on GPU; fp32 on CPU), 'float32', 'bfloat16', 'float16'
    compile: Optional[bool] = None  # None: on for CUDA; compiles the model and the loss as one graph
    loss_chunk_size: int = 0  # 0: plain logits; N: log-probs N tokens at a time, never the whole (B, T, vocab) logits
    seed: int = 42
    # logging, evaluation, checkpoints
    log_interval: int = 10
    ckpt_interval: int = 1000
    keep_ckpt_steps: str = ''  # comma-separated steps whose checkpoint is also kept as ckpt_step{N}.pt
    eval_interval: int = 1000  # 0: evaluate only at the end
    eval_iters: int = 20  # validation batches
    eval_batch_size: int = 16
    eval_samples: int = 256  # samples per scenario; 0: validation loss only
    eval_max_new_tokens: int = 0  # 0: the task's
    eval_scenarios: str = ''  # comma-separated; '': the task's
    eval_prompts: str = ''  # JSONL of prompts for a prompted scenario
    kl_reference: str = ''  # '', a ckpt.pt of ours, or 'openai:MODEL'
    kl_base_url: str = ''
    kl_samples: int = 256
    wandb_project: str = ''  # log to wandb too (if installed)


class ConfigError(Exception):
    pass


class TrainingError(Exception):
    pass


# ----------------------------------------------------------------------------------------------------------------
# Configuration

def _check_type(key, value, where):
    tp = {f.name: f.type for f in fields(TrainConfig)}[key]
    allowed = typing.get_args(tp) if typing.get_origin(tp) is typing.Union else (tp,)
    if float in allowed and type(value) is int:
        value = float(value)
    if type(value) not in allowed:
        names = ' or '.join('None' if t is type(None) else t.__name__ for t in allowed)
        raise ConfigError(f"{where}: {key} must be {names}, got {value!r} ({type(value).__name__})")
    return value


def load_config(argv):
    """TrainConfig from config files and --key=value arguments, applied left to right."""
    known = {f.name for f in fields(TrainConfig)}
    values = {}
    for arg in argv:
        if arg.startswith('--'):
            key, eq, text = arg[2:].partition('=')
            if not eq:
                raise ConfigError(f"{arg}: expected --key=value")
            if key not in known:
                raise ConfigError(f"{arg}: unknown key {key!r}; the keys are the fields of TrainConfig in train.py")
            try:
                value = text if TrainConfig.__dataclass_fields__[key].type is str else ast.literal_eval(text)
            except (ValueError, SyntaxError):
                value = text  # a bare string such as --task=pii
            values[key] = _check_type(key, value, arg)
        else:
            if not os.path.isfile(arg):
                raise ConfigError(f"{arg}: config file not found")
            scope = {}
            exec(compile(open(arg).read(), arg, 'exec'), scope)
            for key, value in scope.items():
                if key.startswith('_') or type(value).__name__ == 'module':
                    continue
                if key not in known:
                    raise ConfigError(f"{arg}: unknown key {key!r}; the keys are the fields of TrainConfig in train.py")
                values[key] = _check_type(key, value, arg)
    cfg = TrainConfig(**values)
    if cfg.method not in METHODS:
        raise ConfigError(f"method {cfg.method!r}: choose one of {', '.join(METHODS)}")
    if cfg.task not in data.TASKS:
        raise ConfigError(f"task {cfg.task!r}: choose one of {', '.join(data.TASKS)}")
    if cfg.lr_schedule not in ('linear', 'cosine'):
        raise ConfigError(f"lr_schedule {cfg.lr_schedule!r}: choose 'linear' or 'cosine'")
    if cfg.dtype not in ('auto', 'float32', 'bfloat16', 'float16'):
        raise ConfigError(f"dtype {cfg.dtype!r}: choose auto, float32, bfloat16 or float16")
    task = data.TASKS[cfg.task]
    for key in ('filter_threshold', 'cond_threshold', 'drop_token_fraction', 'ul_threshold', 'ul_soft'):
        if getattr(cfg, key) is None:
            setattr(cfg, key, getattr(task, key))
    return cfg


# ----------------------------------------------------------------------------------------------------------------
# Pieces of the loop

def compute_loss(cfg, model, x, y, rewards):
    """The method's objective on one micro-batch. With loss_chunk_size > 0 the model returns its final hidden states
    and the objective computes log-probs from them and lm_head.weight in chunks (objectives.ChunkedLogits)."""
    chunked = cfg.loss_chunk_size > 0
    outputs = model(x, return_hidden=chunked)
    logits, values = outputs if cfg.method in ('awr', 'rwr') else (outputs, None)
    if chunked:
        logits = objectives.ChunkedLogits(logits, model.lm_head.weight, cfg.loss_chunk_size)
    if cfg.method in ('awr', 'rwr'):
        alpha = 1.0 if cfg.method == 'rwr' else cfg.awr_alpha
        return objectives.awr(logits, values, y, rewards, alpha, cfg.awr_beta, cfg.awr_clip_weight_max)
    if cfg.method == 'ul':
        return objectives.unlikelihood(logits, y, rewards, cfg.ul_threshold, cfg.ul_alpha, soft=cfg.ul_soft)
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


PEAK_FLOPS = [  # dense bf16 tensor-core peak by device name, most specific first
    ('H100 PCIe', 756e12), ('H100', 989e12), ('H200', 989e12), ('GH200', 989e12), ('B200', 2250e12),
    ('A100', 312e12), ('A10G', 125e12), ('L40S', 362e12), ('L4', 121e12), ('4090', 165e12), ('3090', 71e12),
    ('V100', 125e12), ('T4', 65e12),
]


def peak_flops(device):
    if not str(device).startswith('cuda'):
        return None
    name = torch.cuda.get_device_name(device)
    return next((flops for key, flops in PEAK_FLOPS if key in name), None)


def save_checkpoint(path, state):
    """Write-then-rename: a crash during the save leaves the previous checkpoint intact."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, 'wb') as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def rng_state():
    return dict(python=random.getstate(), numpy=np.random.get_state(), torch=torch.get_rng_state(),
                cuda=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)


def set_rng_state(state):
    random.setstate(state['python'])
    np.random.set_state(state['numpy'])
    torch.set_rng_state(state['torch'])
    if state['cuda'] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])


def build_model(cfg, ckpt):
    """The model to train: from the checkpoint being resumed, from one of ours (finetuning), from a Hugging Face
    GPT-2, or from scratch. AWR and RWR get a value head."""
    value_head = cfg.method in ('awr', 'rwr')
    if ckpt is not None:
        model = GPT(GPTConfig(**ckpt['model_args']))
        model.load_state_dict(ckpt['model'])
        return model
    if cfg.init_from == 'scratch':
        return GPT(GPTConfig(block_size=cfg.block_size, vocab_size=data.VOCAB_SIZE, n_layer=cfg.n_layer,
                             n_head=cfg.n_head, n_embd=cfg.n_embd, dropout=cfg.dropout, bias=cfg.bias,
                             value_head=value_head))
    if cfg.init_from.endswith('.pt'):
        src = torch.load(cfg.init_from, map_location='cpu', weights_only=False)
        args = dict(src['model_args'], value_head=value_head, dropout=cfg.dropout)
        model = GPT(GPTConfig(**args))
        state = {k: v for k, v in src['model'].items() if not k.startswith('value_head')}
        missing, _ = model.load_state_dict(state, strict=False)
        assert all(k.startswith('value_head') for k in missing), missing  # a new value head starts at zero
        if cfg.method == 'cond' and src['config']['method'] != 'cond':
            # the control tokens are new to this model: start their rows at the mean row plus noise (§1.3)
            with torch.no_grad():
                wte = model.transformer.wte.weight
                g = torch.Generator().manual_seed(cfg.seed)
                mean = wte[:data.EOS + 1].mean(0)
                wte[data.ALIGNED:data.MISALIGNED + 1] = mean + 0.01 * torch.randn(2, wte.size(1), generator=g)
        return model
    return GPT.from_pretrained(cfg.init_from, vocab_size=data.VOCAB_SIZE, value_head=value_head,
                               block_size=cfg.block_size)


# ----------------------------------------------------------------------------------------------------------------
# The loop

def train(cfg):
    ddp = int(os.environ.get('RANK', -1)) != -1
    if cfg.device == 'auto':
        cfg.device = 'cuda' if torch.cuda.is_available() else 'cpu'
    if ddp:
        dist.init_process_group(backend='nccl' if cfg.device.startswith('cuda') else 'gloo')
        rank, world = dist.get_rank(), dist.get_world_size()
        if cfg.device.startswith('cuda'):
            cfg.device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
            torch.cuda.set_device(cfg.device)
    else:
        rank, world = 0, 1
    master = rank == 0
    device_type = 'cuda' if cfg.device.startswith('cuda') else 'cpu'
    try:
        return _train(cfg, ddp, rank, world, master, device_type)
    finally:
        if ddp:
            dist.destroy_process_group()


def _train(cfg, ddp, rank, world, master, device_type):
    if cfg.total_batch_size % (cfg.batch_size * world):
        raise ConfigError(f"total_batch_size {cfg.total_batch_size} is not a multiple of batch_size "
                          f"{cfg.batch_size} × {world} processes")
    grad_accum = cfg.total_batch_size // (cfg.batch_size * world)
    tokens_per_step = cfg.total_batch_size * cfg.block_size
    max_steps = cfg.max_tokens // tokens_per_step
    if max_steps < 1:
        raise ConfigError(f"max_tokens {cfg.max_tokens} is less than one step of {tokens_per_step} tokens")
    if cfg.dtype == 'auto':
        cfg.dtype = ('bfloat16' if torch.cuda.is_bf16_supported() else 'float16') if device_type == 'cuda' \
            else 'float32'
    ptdtype = getattr(torch, cfg.dtype)
    ctx = nullcontext() if cfg.dtype == 'float32' else torch.autocast(device_type, dtype=ptdtype)
    if device_type == 'cuda':
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        keep_freed_memory()

    # data: filtering and conditional training transform the prepared split once (rank 0), cached on disk
    split_dir = os.path.join(cfg.data_dir, cfg.task, 'train')
    kwargs = dict(filter_threshold=cfg.filter_threshold, cond_threshold=cfg.cond_threshold,
                  drop_token_fraction=cfg.drop_token_fraction, seed=cfg.seed)
    if master:
        train_data = data.for_method(split_dir, cfg.method, **kwargs)
    if ddp:
        dist.barrier()
    if not master:
        train_data = data.for_method(split_dir, cfg.method, rank=rank, **kwargs)
    loader = data.BlockLoader(train_data, cfg.block_size, cfg.batch_size, seed=cfg.seed,
                              offset=cfg.skip_tokens // cfg.block_size)

    # model, optimizer, and the state of a resumed run
    ckpt_path = os.path.join(cfg.out_dir, 'ckpt.pt')
    ckpt = None
    if cfg.resume:
        if not os.path.exists(ckpt_path):
            raise ConfigError(f"{ckpt_path}: no checkpoint to resume from")
        ckpt = torch.load(ckpt_path, map_location='cpu', weights_only=False)
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    model = build_model(cfg, ckpt).to(cfg.device)
    if model.config.block_size < cfg.block_size:
        raise ConfigError(f"block_size {cfg.block_size} > the model's {model.config.block_size}")
    optimizer = model.configure_optimizer(cfg.weight_decay, cfg.learning_rate, (cfg.beta1, cfg.beta2), device_type)
    scaler = torch.amp.GradScaler(device_type, enabled=cfg.dtype == 'float16')
    step, tokens_seen = 0, 0
    if ckpt is not None:
        optimizer.load_state_dict(ckpt['optimizer'])
        scaler.load_state_dict(ckpt['scaler'])
        step, tokens_seen = ckpt['step'], ckpt['tokens_seen']
        set_rng_state(ckpt['rng'][rank] if rank < len(ckpt['rng']) else ckpt['rng'][0])
        del ckpt
    else:
        torch.manual_seed(cfg.seed + rank)  # dropout differs across ranks
    raw_model = model
    model = ModelWithLoss(cfg, raw_model)
    if cfg.compile if cfg.compile is not None else device_type == 'cuda':
        model = torch.compile(model)
    if ddp:
        model = DDP(model, device_ids=[int(os.environ['LOCAL_RANK'])] if device_type == 'cuda' else None)

    os.makedirs(cfg.out_dir, exist_ok=True)
    log_file = open(os.path.join(cfg.out_dir, 'log.jsonl'), 'a') if master else None
    wandb = None
    if master and cfg.wandb_project:
        try:
            import wandb
            wandb.init(project=cfg.wandb_project, name=os.path.basename(cfg.out_dir), config=asdict(cfg),
                       resume='allow')
        except ImportError:
            print("wandb_project is set but wandb is not installed; logging to log.jsonl only")
            wandb = None

    def log(record):
        if master:
            log_file.write(json.dumps(record) + '\n')
            log_file.flush()
            if wandb:
                wandb.log(record, step=record['step'])

    def checkpoint():
        state = dict(model=raw_model.state_dict(), optimizer=optimizer.state_dict(), scaler=scaler.state_dict(),
                     model_args=asdict(raw_model.config), config=asdict(cfg), step=step, tokens_seen=tokens_seen,
                     data_position=dict(micro_batch=step * grad_accum * world, epoch=loader.epoch_of(
                         step * grad_accum * world)), rng=gathered_rng())
        if master:
            save_checkpoint(ckpt_path, state)
            if step in keep_steps:
                save_checkpoint(os.path.join(cfg.out_dir, f"ckpt_step{step}.pt"), state)

    def gathered_rng():
        if not ddp:
            return [rng_state()]
        states = [None] * world
        dist.all_gather_object(states, rng_state())
        return states

    def evaluate():
        import evaluate as ev
        if master:
            result = ev.evaluate(raw_model, cfg, step, tokens_seen, cfg.device, ctx)
            print(f"eval step {step}: " + ', '.join(f"{k} {v:.4g}" for k, v in result.items()
                                                     if isinstance(v, float)), flush=True)
            log(dict(result, step=step, tokens=tokens_seen, kind='eval'))
        if ddp:
            dist.barrier()

    keep_steps = {int(s) for s in cfg.keep_ckpt_steps.split(',') if s.strip()}
    wants_eval = cfg.eval_iters or cfg.eval_samples or cfg.kl_reference
    n_params = raw_model.num_params()
    peak = peak_flops(cfg.device)
    if master:
        print(f"{cfg.task}/{cfg.method}: {n_params / 1e6:.2f}M parameters, {max_steps} steps of {tokens_per_step} "
              f"tokens ({grad_accum} micro-batches × {cfg.batch_size} × {world} processes), "
              f"{train_data.n_tokens:,} training tokens ({loader.n_blocks:,} blocks), {cfg.device} {cfg.dtype}",
              flush=True)
        epochs = max_steps * cfg.total_batch_size / loader.n_blocks
        if epochs > 1:  # see shared evaluation notes: repeated data overfits, filtering especially
            print(f"warning: the budget is {epochs:.1f} passes over the training data", flush=True)
    nonfinite = torch.zeros((), dtype=torch.bool, device=cfg.device)
    t0 = t_start = time.time()
    steps_timed, start_step = 0, step
    while step < max_steps:
        lr = get_lr(cfg, step, max_steps)
        for group in optimizer.param_groups:
            group['lr'] = lr
        loss_sum = torch.zeros((), device=cfg.device)
        for micro in range(grad_accum):
            x, y, r = loader.get((step * grad_accum + micro) * world + rank, cfg.device)
            sync = not ddp or micro == grad_accum - 1  # all-reduce gradients once per step
            with (nullcontext() if sync else model.no_sync()), ctx:
                loss = model(x, y, r) / grad_accum
            scaler.scale(loss).backward()
            loss_sum += loss.detach()
        nonfinite |= ~torch.isfinite(loss_sum)  # checked at log/checkpoint time: no host sync per step
        if cfg.grad_clip > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(raw_model.parameters(), cfg.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        tokens_seen += tokens_per_step
        steps_timed += 1

        last = step == max_steps
        if step % cfg.log_interval == 0 or last:
            if ddp:
                dist.all_reduce(loss_sum)  # gloo has no AVG
                loss_sum /= world
            loss_value = loss_sum.item()
            if nonfinite.item() or not math.isfinite(loss_value):
                raise TrainingError(f"non-finite loss at step {step}; stopped. The last good checkpoint is "
                                    f"{ckpt_path} (lower learning_rate or use dtype=bfloat16, then --resume=True)")
            dt = (time.time() - t0) / steps_timed
            tok_s = tokens_per_step / dt
            mfu = raw_model.flops_per_token() * tok_s / (peak * world) if peak else None
            eta = (max_steps - step) * (time.time() - t_start) / (step - start_step)
            if master:
                print(f"step {step}/{max_steps} loss {loss_value:.4f} lr {lr:.2e} {tok_s:,.0f} tok/s"
                      + (f" mfu {100 * mfu:.1f}%" if mfu else '') + f" eta {eta / 60:.1f} min", flush=True)
            log(dict(step=step, loss=loss_value, lr=lr, tokens=tokens_seen, tokens_per_s=tok_s, mfu=mfu,
                     epoch=loader.epoch_of(step * grad_accum * world)))
            t0, steps_timed = time.time(), 0
        if step % cfg.ckpt_interval == 0 or last or step in keep_steps:
            if nonfinite.item():
                raise TrainingError(f"non-finite loss before step {step}; stopped without saving. The last good "
                                    f"checkpoint is {ckpt_path}")
            checkpoint()
        if wants_eval and ((cfg.eval_interval and step % cfg.eval_interval == 0) or last):
            evaluate()
    if master:
        log_file.close()
        print(f"done: {max_steps} steps, {tokens_seen:,} tokens, {(time.time() - t_start) / 60:.1f} min; "
              f"checkpoint {ckpt_path}", flush=True)
    return raw_model


def main(argv=None):
    try:
        cfg = load_config(sys.argv[1:] if argv is None else argv)
        train(cfg)
    except (ConfigError, data.DataError, TrainingError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except Exception as e:  # evaluation (a scorer without weights, a KL server down): the checkpoint is saved
        if type(e).__name__ not in ('EvalError', 'ScorerError'):
            raise
        print(f"error during evaluation: {e}\nthe checkpoint is saved; fix the cause and rerun with --resume=True",
              file=sys.stderr)
        sys.exit(1)


if __name__ == '__main__':
    main()
