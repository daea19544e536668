"""
A training run's state on disk and in flight: the rules for resuming one from its checkpoint (checkpoints.py), a
history (log.jsonl, eval.jsonl) that reads as an uninterrupted run's after a resume, and the stop signals
(SIGTERM, Ctrl-C) that end a run at a step's end with its checkpoint saved.
"""
import glob
import json
import os
import re
import signal
import socket
import sys
import threading
from dataclasses import asdict

import torch
import torch.distributed as dist

import data
from checkpoints import read_checkpoint
from settings import ConfigError

class TrainingError(Exception):
    pass


class Stopped(Exception):
    """A stop signal was obeyed: the checkpoint of the step it ended is saved. The exit status is 128 + signum."""

    def __init__(self, signum, message):
        super().__init__(message)
        self.signum = signum


# What a run in progress is: its model, objective, data and data order, and the optimizer hyperparameters that its
# saved state restores. A resume refuses to change these; the rest (budget, learning rate, intervals, evaluation,
# device, precision, compile, batch_size: the data order depends on total_batch_size only) may change.
FIXED_ON_RESUME = ('task', 'method', 'data_dir', 'init_from', 'skip_tokens', 'n_layer', 'n_head', 'n_embd',
                   'block_size', 'dropout', 'bias', 'filter_threshold', 'cond_threshold', 'drop_token_fraction',
                   'cond_bins', 'ul_threshold', 'ul_soft', 'ul_alpha', 'awr_alpha', 'awr_beta',
                   'awr_clip_weight_max', 'total_batch_size', 'weight_decay', 'beta1', 'beta2', 'seed',
                   'init_seed_offset')


def checkpoint_to_resume(cfg, ckpt_path, max_steps, master, data_identity):
    """The checkpoint of the run in out_dir, once cfg agrees with the settings it was trained with and data_identity
    (data_fingerprints, now) with the data it was trained on."""
    if not os.path.exists(ckpt_path):
        raise ConfigError(f"{ckpt_path}: no checkpoint to resume from; start the run without --resume=True")
    ckpt = read_checkpoint(ckpt_path)
    saved = ckpt['config']
    changed = {k: (saved[k], v) for k, v in asdict(cfg).items()
               if k in saved and saved[k] != v and k not in ('resume', 'overwrite', 'out_dir')}
    fixed = [k for k in FIXED_ON_RESUME if k in changed]  # in the order of the table
    if fixed:
        raise ConfigError(f"--resume=True: {ckpt_path} was trained with " + ', '.join(
            f"{k}={changed[k][0]!r} (now {changed[k][1]!r})" for k in fixed) + "; these cannot change in a run in "
            "progress: drop those settings to continue it, or start a new run in another --out_dir")
    if changed and master:
        print("resuming with changed settings: " + ', '.join(f"{k} {old!r} -> {new!r}"
                                                             for k, (old, new) in changed.items()), flush=True)
    if ckpt['step'] > max_steps:
        raise ConfigError(f"max_tokens {cfg.max_tokens}: {max_steps} steps, fewer than the {ckpt['step']} steps "
                          f"of {ckpt_path}")
    check_same_data(cfg, ckpt_path, ckpt.get('data', {}), data_identity)
    return ckpt


def data_fingerprints(cfg):
    """The fingerprints (data.PreparedData.fingerprint) of the prepared splits a run trains and is evaluated on, which
    its checkpoints record."""
    task_dir = os.path.join(cfg.data_dir, cfg.task)
    return {split: data.PreparedData(os.path.join(task_dir, split)).fingerprint() for split in ('train', 'val')
            if os.path.exists(os.path.join(task_dir, split, 'header.json'))}


def check_same_data(cfg, ckpt_path, recorded, now):
    """A resume goes on with the data the run was trained on: the same data_dir is not enough, prepare.py may have
    written other splits there since."""
    changed = [split for split in sorted(set(recorded) | set(now)) if recorded.get(split) != now.get(split)]
    if changed:
        def what(fp):
            return 'missing' if fp is None else f"{fp['header']['n_tokens']:,} tokens from {fp['header']['source']}"
        raise ConfigError(f"--resume=True: {ckpt_path} was trained on other data than {cfg.data_dir}/{cfg.task} "
                          f"holds now (" + '; '.join(f"{s}: {what(recorded.get(s))} then, {what(now.get(s))} now"
                                                     for s in changed) + "), prepared again since?; resume on the "
                          "data it was trained on, or start a new run in another --out_dir")


def check_out_dir(cfg, ckpt_path):
    """A fresh run never mixes its checkpoints and logs with those of the run already in out_dir."""
    if not cfg.resume and not cfg.overwrite and os.path.exists(ckpt_path):
        raise ConfigError(f"{cfg.out_dir} holds a run ({ckpt_path}); continue it with --resume=True, or start "
                          f"again with --overwrite=True (deletes it) or in another --out_dir")


# ----------------------------------------------------------------------------------------------------------------
# out_dir: a resumed run's history is that of an uninterrupted run

RUN_FILES = ('ckpt.pt', 'ckpt_step*.pt', 'log.jsonl', 'eval.jsonl', 'eval_step*.json')
LOCK = 'run.lock'  # {"host", "pid"} of the process whose run writes out_dir


def _lock_holder(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None  # gone, or cut short by a kill


def claim_out_dir(out_dir):
    """(Rank 0) Make out_dir this process's for the run's life (out_dir/run.lock): refused while a live process of
    this host holds it (a second train.py resuming a run in progress would rewrite its logs under it), or a process
    of another host (say if that run is gone: delete the lock). A killed run's lock is taken over."""
    os.makedirs(out_dir, exist_ok=True)
    path, me = os.path.join(out_dir, LOCK), dict(host=socket.gethostname(), pid=os.getpid())
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            holder = _lock_holder(path)
            if holder == me:
                return
            if holder and holder.get('host') != me['host']:
                raise ConfigError(f"{out_dir} is in use by process {holder.get('pid')} on {holder.get('host')} "
                                  f"({path}); if that run is gone, delete {path}") from None
            if holder and data.pid_alive(int(holder.get('pid', 0))):
                raise ConfigError(f"{out_dir} is in use by process {holder['pid']}, a run in progress ({path}); "
                                  f"wait for it to end, or stop it first") from None
            os.remove(path)  # its process is gone
            continue
        with os.fdopen(fd, 'w') as f:
            json.dump(me, f)
        return


def release_out_dir(out_dir):
    path = os.path.join(out_dir, LOCK)
    if _lock_holder(path) == dict(host=socket.gethostname(), pid=os.getpid()):
        os.remove(path)


def prepare_out_dir(cfg, step):
    """(Rank 0) out_dir for a run starting at step (0: a fresh one): without the temporary files of killed runs,
    without the previous run if overwrite=True, and without the records logged after the checkpoint (the steps
    after it are run and logged again)."""
    os.makedirs(cfg.out_dir, exist_ok=True)
    data.remove_leftovers(cfg.out_dir)
    if cfg.overwrite and not cfg.resume:
        for path in sorted(p for pattern in RUN_FILES for p in glob.glob(os.path.join(cfg.out_dir, pattern))):
            print(f"overwrite=True: deleting {path}", flush=True)
            os.remove(path)
    for name in ('log.jsonl', 'eval.jsonl'):
        drop_records_after(os.path.join(cfg.out_dir, name), step)
    for path in glob.glob(os.path.join(cfg.out_dir, 'eval_step*.json')):
        if int(re.search(r'eval_step(\d+)\.json$', path).group(1)) > step:
            os.remove(path)


def record_step(line):
    """The step of a JSONL record, None for a line cut short by a kill."""
    try:
        return json.loads(line)['step'] if line.endswith('\n') else None
    except (json.JSONDecodeError, KeyError, TypeError):
        return None


def drop_records_after(path, step):
    """Rewrite a JSONL log without its records past step, atomically."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        lines = f.readlines()
    steps = [record_step(line) for line in lines]
    kept = [line for line, s in zip(lines, steps) if s is not None and s <= step]
    if len(kept) < len(lines):
        data.write_atomically(path, ''.join(kept))
        print(f"{path}: dropped {len(lines) - len(kept)} records from after step {step}", flush=True)


def evaluated(out_dir, step):
    """Whether eval.jsonl holds the evaluation of step."""
    path = os.path.join(out_dir, 'eval.jsonl')
    if not os.path.exists(path):
        return False
    with open(path) as f:
        return any(record_step(line) == step for line in f)


class RunLog:
    """log.jsonl in out_dir (rank 0), and wandb if wandb_project is set: the config, every record's numbers against
    tokens seen (the original's x-axis), and each evaluation's samples as a table per scenario, S/current_samples
    (prompt, continuation, score), as the original logged them. The wandb run's files go under out_dir/wandb
    (WANDB_MODE=offline: sync them later with `wandb sync`); a resumed run continues its wandb run, whose id its
    checkpoint holds. Without wandb installed, a warning and log.jsonl alone."""

    def __init__(self, cfg, master, wandb_run_id=None):
        self.out_dir = cfg.out_dir
        self.file = open(os.path.join(cfg.out_dir, 'log.jsonl'), 'a') if master else None
        self.wandb = self.run = None
        if master and cfg.wandb_project:
            try:
                import wandb
            except ImportError:
                print("warning: wandb_project is set but wandb is not installed (pip install wandb); logging to "
                      "log.jsonl and eval.jsonl only", file=sys.stderr, flush=True)
                return
            try:
                self.run = wandb.init(project=cfg.wandb_project, name=os.path.basename(os.path.normpath(cfg.out_dir)),
                                      config=asdict(cfg), dir=cfg.out_dir, id=wandb_run_id, resume='allow')
            except Exception as e:  # not logged in, no network: wandb's own errors, all kinds
                raise TrainingError(f"wandb_project={cfg.wandb_project}: wandb did not start ({e}); run `wandb login`, "
                                    f"or set WANDB_MODE=offline, or drop wandb_project") from None
            self.wandb = wandb
            self.run.define_metric('tokens')
            self.run.define_metric('*', step_metric='tokens')

    @property
    def wandb_run_id(self):
        return self.run.id if self.run else None

    def __call__(self, record):
        if self.file:
            self.file.write(json.dumps(record) + '\n')
            self.file.flush()
        if self.run:
            numbers = {k: v for k, v in record.items() if type(v) in (int, float)}  # not None, text or errors
            if record.get('kind') == 'eval':
                numbers.update(self.sample_tables(record['step']))
            self.run.log(numbers)

    def sample_tables(self, step):
        """{S/current_samples: a wandb.Table} from the samples evaluate wrote to eval_step{step}.json."""
        with open(os.path.join(self.out_dir, f'eval_step{step}.json')) as f:
            samples = json.load(f)['samples']
        return {f'{scenario}/current_samples': self.wandb.Table(
            columns=['prompt', 'continuation', 'score'], data=[[s['prompt'], s['text'], s['score']] for s in rows])
            for scenario, rows in samples.items()}

    def close(self):
        if self.file:
            self.file.close()
        if self.run:
            self.run.finish()


# ----------------------------------------------------------------------------------------------------------------
# Stopping

def max_over_ranks(value, ddp):
    """The largest value over the processes, so that every rank takes the same branch (collectives may follow)."""
    if ddp:
        value = value.float()  # a copy, reduced in place; gloo and nccl both have MAX for floats
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return value.item()


class StopSignals:
    """SIGTERM (a preempted job) and Ctrl-C, once install()ed: the loop ends its step, saves a checkpoint and raises
    Stopped. A second Ctrl-C stops at once."""

    def __init__(self, ddp, device):
        self.ddp, self.device, self.signum, self.previous, self.pid = ddp, device, 0, {}, os.getpid()

    def install(self):
        if threading.current_thread() is threading.main_thread():  # Python runs handlers in the main thread only
            self.previous = {s: signal.signal(s, self.handle) for s in (signal.SIGTERM, signal.SIGINT)}

    def handle(self, signum, frame):
        if os.getpid() != self.pid:  # a forked child (a scorer's process pool): the signal is for it, act as default
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        if self.signum and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        print(f"{signal.Signals(signum).name}: stopping after this step (Ctrl-C again stops now)", file=sys.stderr,
              flush=True)

    def received(self):
        """The signal that stops the run at this step's end (0: none); the same on every rank."""
        if not self.ddp:
            return self.signum
        return int(max_over_ranks(torch.tensor(self.signum, device=self.device), self.ddp))  # a host sync per step

    def uninstall(self):
        for s, handler in self.previous.items():
            signal.signal(s, handler)
        self.previous = {}


def divergence_error(cfg, where, ckpt_path, saved_step):
    """The error for a non-finite loss, saying what this run has saved and what may help."""
    fix = 'lower learning_rate' + (' or use dtype=bfloat16 (float16 overflows)' if cfg.dtype == 'float16' else '')
    if saved_step is None:
        return TrainingError(f"non-finite loss {where}; stopped, no checkpoint was saved: {fix} and start again")
    return TrainingError(f"non-finite loss {where}; stopped without saving. {ckpt_path} holds step {saved_step}, "
                         f"the last good one: {fix}, then --resume=True")
