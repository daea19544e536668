"""
Pretrain (or finetune) a GPT-2 with one of the six PHF objectives: mle, filter, cond, ul, awr, rwr.

    python train.py config/pep8_cond.py                          # one process (GPU if there is one, else CPU)
    python train.py config/pep8_cond.py config/cpu_small.py      # config files apply left to right
    python train.py config/pep8_cond.py --batch_size=8 --compile=False
    python train.py config/pep8_cond.py --resume=True            # continue from out_dir/ckpt.pt
    python train.py config/pep8_cond.py --overwrite=True         # start again, deleting the run in out_dir
    torchrun --standalone --nproc_per_node=8 train.py config/toxicity_mle.py
    torchrun --nnodes=2 --node_rank=0 --nproc_per_node=8 --master_addr=HOST --master_port=29500 train.py ...

Config files are short Python files of assignments to the keys of TrainConfig; `--key=value` overrides them.
SIGTERM (a preempted job) or Ctrl-C ends the current step, saves a checkpoint and exits with status 128 + the signal;
--resume=True continues the run where it stopped. A second Ctrl-C stops at once.
"""
import ast
import glob
import json
import math
import os
import random
import re
import shlex
import signal
import sys
import threading
import time
import traceback
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
from model import GPT, CheckpointError, GPTConfig, keep_freed_memory, read_checkpoint

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
    overwrite: bool = False  # a fresh run into an out_dir that holds a run deletes that run first (else: refused)
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


class Stopped(Exception):
    """A stop signal was obeyed: the checkpoint of the step it ended is saved. The exit status is 128 + signum."""

    def __init__(self, signum, message):
        super().__init__(message)
        self.signum = signum


# ----------------------------------------------------------------------------------------------------------------
# Configuration

# The range of every numeric setting, checked by load_config: keys, test, what the test asks for
RANGES = (
    ('n_layer n_head n_embd block_size batch_size total_batch_size max_tokens log_interval ckpt_interval '
     'eval_batch_size kl_samples', lambda v: v >= 1, 'at least 1'),
    ('skip_tokens loss_chunk_size eval_interval eval_iters eval_samples eval_max_new_tokens seed learning_rate '
     'min_lr weight_decay grad_clip ul_alpha', lambda v: v >= 0, '0 or more'),
    ('dropout drop_token_fraction warmup_frac awr_alpha', lambda v: 0 <= v <= 1, 'between 0 and 1'),
    ('beta1 beta2', lambda v: 0 <= v < 1, 'at least 0 and below 1'),
    ('awr_beta awr_clip_weight_max', lambda v: v > 0, 'above 0'),
)


def _check_type(key, value, where):
    tp = {f.name: f.type for f in fields(TrainConfig)}[key]
    allowed = typing.get_args(tp) if typing.get_origin(tp) is typing.Union else (tp,)
    if float in allowed and type(value) is int:
        value = float(value)
    if type(value) not in allowed:
        names = ' or '.join('None' if t is type(None) else t.__name__ for t in allowed)
        raise ConfigError(f"{where}: {key} must be {names}, got {value!r} ({type(value).__name__})")
    return value


def read_config_file(path):
    """The assignments of a config file, a short Python file; its errors name the file and line."""
    if not os.path.isfile(path):
        raise ConfigError(f"{path}: config file not found")
    scope = {}
    with open(path) as f:
        text = f.read()
    try:
        exec(compile(text, path, 'exec'), scope)
    except SyntaxError as e:
        raise ConfigError(f"{path}, line {e.lineno}: {e.msg}; a config file holds Python assignments") from None
    except Exception as e:
        line = next((frame.lineno for frame in reversed(traceback.extract_tb(e.__traceback__))
                     if frame.filename == path), '?')
        raise ConfigError(f"{path}, line {line}: {type(e).__name__}: {e}") from None
    return {key: value for key, value in scope.items() if not key.startswith('_') and type(value).__name__ != 'module'}


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
            for key, value in read_config_file(arg).items():
                if key not in known:
                    raise ConfigError(f"{arg}: unknown key {key!r}; the keys are the fields of TrainConfig in train.py")
                values[key] = _check_type(key, value, arg)
    cfg = TrainConfig(**values)
    if cfg.task not in data.TASKS:
        raise ConfigError(f"task {cfg.task!r}: choose one of {', '.join(data.TASKS)}")
    task = data.TASKS[cfg.task]
    for key in ('filter_threshold', 'cond_threshold', 'drop_token_fraction', 'ul_threshold', 'ul_soft'):
        if getattr(cfg, key) is None:
            setattr(cfg, key, getattr(task, key))
    check_config(cfg)
    return cfg


def check_config(cfg):
    """Every setting in its range, and a device this machine has: refused before anything runs."""
    if cfg.method not in METHODS:
        raise ConfigError(f"method {cfg.method!r}: choose one of {', '.join(METHODS)}")
    if cfg.lr_schedule not in ('linear', 'cosine'):
        raise ConfigError(f"lr_schedule {cfg.lr_schedule!r}: choose 'linear' or 'cosine'")
    if cfg.dtype not in ('auto', 'float32', 'bfloat16', 'float16'):
        raise ConfigError(f"dtype {cfg.dtype!r}: choose auto, float32, bfloat16 or float16")
    for key, value in asdict(cfg).items():
        if type(value) is float and not math.isfinite(value):
            raise ConfigError(f"{key} {value!r}: must be a finite number")
    for keys, ok, wanted in RANGES:
        for key in keys.split():
            if not ok(getattr(cfg, key)):
                raise ConfigError(f"{key} {getattr(cfg, key)!r}: must be {wanted}")
    if cfg.n_embd % cfg.n_head:
        raise ConfigError(f"n_embd {cfg.n_embd} is not a multiple of n_head {cfg.n_head}")
    if cfg.min_lr > cfg.learning_rate:
        raise ConfigError(f"min_lr {cfg.min_lr} is above learning_rate {cfg.learning_rate}")
    try:
        keep_steps(cfg)
    except ValueError:
        raise ConfigError(f"keep_ckpt_steps {cfg.keep_ckpt_steps!r}: expected step numbers separated by commas") \
            from None
    check_device(cfg.device)


def keep_steps(cfg):
    """The steps whose checkpoint is also kept, as ckpt_step{N}.pt."""
    return {int(s) for s in cfg.keep_ckpt_steps.split(',') if s.strip()}


def check_device(device):
    """'auto', 'cpu', or a CUDA device this machine has."""
    kind, colon, index = device.partition(':')
    if device in ('auto', 'cpu'):
        return
    if kind != 'cuda' or (colon and not index.isdigit()):
        raise ConfigError(f"device {device!r}: choose auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise ConfigError(f"device {device!r}: CUDA is not available on this machine; use --device=cpu (or auto)")
    if colon and int(index) >= torch.cuda.device_count():
        raise ConfigError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                          f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")


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
    """Write-then-rename: a crash or a full disk during the save leaves the previous checkpoint intact."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, 'wb') as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:  # ENOSPC, EDQUOT, EIO: the run cannot go on, but nothing saved before is lost
        raise TrainingError(f"{path}: not saved, {e.strerror or e}; the checkpoint there before (if any) is "
                            f"unchanged: free disk space (or fix the cause), then resume with --resume=True") from None
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
        src = read_checkpoint(cfg.init_from)
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
# Before the first step: the plan, the checks that would otherwise fail hours later, the data

def plan_steps(cfg, world):
    """(micro-batches per step and process, tokens per step, steps in the budget)."""
    if cfg.total_batch_size % (cfg.batch_size * world):
        raise ConfigError(f"total_batch_size {cfg.total_batch_size} is not a multiple of batch_size "
                          f"{cfg.batch_size} × {world} processes")
    grad_accum = cfg.total_batch_size // (cfg.batch_size * world)
    tokens_per_step = cfg.total_batch_size * cfg.block_size
    max_steps = cfg.max_tokens // tokens_per_step
    if max_steps < 1:
        raise ConfigError(f"max_tokens {cfg.max_tokens} is less than one step of {tokens_per_step} tokens")
    return grad_accum, tokens_per_step, max_steps


def autocast_context(cfg, device_type):
    """The context of the forward passes, once dtype 'auto' is resolved for the device."""
    if cfg.dtype == 'auto':
        cfg.dtype = ('bfloat16' if torch.cuda.is_bf16_supported() else 'float16') if device_type == 'cuda' \
            else 'float32'
    if device_type == 'cuda':
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        keep_freed_memory()
    return nullcontext() if cfg.dtype == 'float32' else torch.autocast(device_type, dtype=getattr(torch, cfg.dtype))


# What a run in progress is: its model, objective, data and data order, and the optimizer hyperparameters that its
# saved state restores. A resume refuses to change these; the rest (budget, learning rate, intervals, evaluation,
# device, precision, compile, batch_size: the data order depends on total_batch_size only) may change.
FIXED_ON_RESUME = ('task', 'method', 'data_dir', 'init_from', 'skip_tokens', 'n_layer', 'n_head', 'n_embd',
                   'block_size', 'dropout', 'bias', 'filter_threshold', 'cond_threshold', 'drop_token_fraction',
                   'ul_threshold', 'ul_soft', 'ul_alpha', 'awr_alpha', 'awr_beta', 'awr_clip_weight_max',
                   'total_batch_size', 'weight_decay', 'beta1', 'beta2', 'seed')


def checkpoint_to_resume(cfg, ckpt_path, max_steps, master):
    """The checkpoint of the run in out_dir, once cfg agrees with the settings it was trained with."""
    if not os.path.exists(ckpt_path):
        raise ConfigError(f"{ckpt_path}: no checkpoint to resume from; start the run without --resume=True")
    ckpt = read_checkpoint(ckpt_path)
    saved = ckpt['config']
    changed = {k: (saved[k], v) for k, v in asdict(cfg).items()
               if k in saved and saved[k] != v and k not in ('resume', 'overwrite', 'out_dir')}
    fixed = [k for k in changed if k in FIXED_ON_RESUME]
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
    return ckpt


def check_out_dir(cfg, ckpt_path):
    """A fresh run never mixes its checkpoints and logs with those of the run already in out_dir."""
    if not cfg.resume and not cfg.overwrite and os.path.exists(ckpt_path):
        raise ConfigError(f"{cfg.out_dir} holds a run ({ckpt_path}); continue it with --resume=True, or start "
                          f"again with --overwrite=True (deletes it) or in another --out_dir")


def check_eval_settings(cfg):
    """What the evaluations will need, checked before the first step rather than when the first one runs."""
    import evaluate as ev
    scenarios = ev.eval_scenarios(cfg)
    for name in scenarios if cfg.eval_samples else []:
        if name not in ev.SCENARIOS:
            raise ConfigError(f"eval_scenarios: unknown scenario {name!r}; choose from {', '.join(ev.SCENARIOS)}")
        if name == 'misaligned' and cfg.method != 'cond':
            raise ConfigError("eval_scenarios: 'misaligned' (samples after <|misaligned|>) is for method 'cond' only")
        if name == 'prompted' and not cfg.eval_prompts:
            raise ConfigError("eval_scenarios: 'prompted' needs --eval_prompts=PATH, a JSONL file of prompts")
    if cfg.eval_prompts and not os.path.isfile(cfg.eval_prompts):
        raise ConfigError(f"eval_prompts {cfg.eval_prompts}: file not found")
    if cfg.kl_reference and not cfg.kl_reference.startswith('openai:') and not os.path.isfile(cfg.kl_reference):
        raise ConfigError(f"kl_reference {cfg.kl_reference}: file not found; pass a ckpt.pt of ours or openai:MODEL")
    if cfg.eval_iters or (cfg.eval_samples and 'functions' in scenarios):  # these read the val split
        data.BlockLoader(data.PreparedData(os.path.join(cfg.data_dir, cfg.task, 'val')), cfg.block_size, 1)


def check_data_dir(cfg):
    """data_dir holds one folder per task, which is what prepare.py --out_dir names (e.g. data/pii): when data_dir
    names a task's folder or a split instead, say which folder to pass."""
    if os.path.exists(os.path.join(cfg.data_dir, cfg.task, 'train')):
        return
    folder = os.path.normpath(cfg.data_dir)
    if os.path.exists(os.path.join(folder, 'header.json')):  # a split, e.g. data/pii/train
        folder = os.path.dirname(folder)
    if not os.path.exists(os.path.join(folder, 'train', 'header.json')):
        return  # nothing prepared here: PreparedData says to run prepare.py
    parent = os.path.dirname(folder) or '.'
    rename = '' if os.path.basename(folder) == cfg.task else f", once {folder} is renamed {parent}/{cfg.task}"
    raise ConfigError(f"data_dir {cfg.data_dir}: this is one task's prepared folder (prepare.py --out_dir); "
                      f"train.py takes the folder that holds it: --data_dir={parent}{rename}")


def training_split(cfg, ddp, master, rank):
    """The split the method trains on: filtering and conditional training transform the prepared split once (rank
    0), cached on disk."""
    split_dir = os.path.join(cfg.data_dir, cfg.task, 'train')
    kwargs = dict(filter_threshold=cfg.filter_threshold, cond_threshold=cfg.cond_threshold,
                  drop_token_fraction=cfg.drop_token_fraction, seed=cfg.seed)
    if master:
        train_data = data.for_method(split_dir, cfg.method, **kwargs)
    if ddp:
        dist.barrier()
    if not master:
        train_data = data.for_method(split_dir, cfg.method, rank=rank, **kwargs)
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
# out_dir: a resumed run's history is that of an uninterrupted run

RUN_FILES = ('ckpt.pt', 'ckpt_step*.pt', 'log.jsonl', 'eval.jsonl', 'eval_step*.json')


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
        with open(f"{path}.tmp-{os.getpid()}", 'w') as f:
            f.writelines(kept)
        os.replace(f"{path}.tmp-{os.getpid()}", path)
        print(f"{path}: dropped {len(lines) - len(kept)} records from after step {step}", flush=True)


def evaluated(out_dir, step):
    """Whether eval.jsonl holds the evaluation of step."""
    path = os.path.join(out_dir, 'eval.jsonl')
    if not os.path.exists(path):
        return False
    with open(path) as f:
        return any(record_step(line) == step for line in f)


class RunLog:
    """log.jsonl in out_dir (rank 0), and wandb if wandb_project is set."""

    def __init__(self, cfg, master):
        self.file = open(os.path.join(cfg.out_dir, 'log.jsonl'), 'a') if master else None
        self.wandb = None
        if master and cfg.wandb_project:
            try:
                import wandb
                wandb.init(project=cfg.wandb_project, name=os.path.basename(cfg.out_dir), config=asdict(cfg),
                           resume='allow')
                self.wandb = wandb
            except ImportError:
                print("wandb_project is set but wandb is not installed; logging to log.jsonl only")

    def __call__(self, record):
        if self.file:
            self.file.write(json.dumps(record) + '\n')
            self.file.flush()
            if self.wandb:
                self.wandb.log(record, step=record['step'])

    def close(self):
        if self.file:
            self.file.close()


# ----------------------------------------------------------------------------------------------------------------
# Stopping

def agreed(value, ddp):
    """The largest value over the processes, so that every rank takes the same branch (collectives may follow)."""
    if ddp:
        value = value.float()  # a copy, reduced in place; gloo and nccl both have MAX for floats
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return value.item()


class StopSignals:
    """SIGTERM (a preempted job) and Ctrl-C, once install()ed: the loop ends its step, saves a checkpoint and raises
    Stopped. A second Ctrl-C stops at once."""

    def __init__(self, ddp, device):
        self.ddp, self.device, self.signum, self.previous = ddp, device, 0, {}

    def install(self):
        if threading.current_thread() is threading.main_thread():  # Python runs handlers in the main thread only
            self.previous = {s: signal.signal(s, self.handle) for s in (signal.SIGTERM, signal.SIGINT)}

    def handle(self, signum, frame):
        if self.signum and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        print(f"{signal.Signals(signum).name}: stopping after this step (Ctrl-C again stops now)", file=sys.stderr,
              flush=True)

    def received(self):
        """The signal that stops the run at this step's end (0: none); the same on every rank."""
        if not self.ddp:
            return self.signum
        return int(agreed(torch.tensor(self.signum, device=self.device), self.ddp))  # a host sync per step

    def uninstall(self):
        for s, handler in self.previous.items():
            signal.signal(s, handler)
        self.previous = {}


def diverged(cfg, where, ckpt_path, saved_step):
    """The error for a non-finite loss, saying what this run has saved and what may help."""
    fix = 'lower learning_rate' + (' or use dtype=bfloat16 (float16 overflows)' if cfg.dtype == 'float16' else '')
    if saved_step is None:
        return TrainingError(f"non-finite loss {where}; stopped, no checkpoint was saved: {fix} and start again")
    return TrainingError(f"non-finite loss {where}; stopped without saving. {ckpt_path} holds step {saved_step}, "
                         f"the last good one: {fix}, then --resume=True")


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
    stop = StopSignals(ddp, cfg.device)
    try:
        return _train(cfg, ddp, rank, world, master, device_type, stop)
    finally:
        stop.uninstall()
        if ddp:
            dist.destroy_process_group()


def _train(cfg, ddp, rank, world, master, device_type, stop):
    grad_accum, tokens_per_step, max_steps = plan_steps(cfg, world)
    ctx = autocast_context(cfg, device_type)
    ckpt_path = os.path.join(cfg.out_dir, 'ckpt.pt')
    check_out_dir(cfg, ckpt_path)
    check_data_dir(cfg)
    ckpt = checkpoint_to_resume(cfg, ckpt_path, max_steps, master) if cfg.resume else None
    wants_eval = cfg.eval_iters or cfg.eval_samples or cfg.kl_reference
    if wants_eval:
        check_eval_settings(cfg)
    train_data = training_split(cfg, ddp, master, rank)
    loader = data.BlockLoader(train_data, cfg.block_size, cfg.batch_size, seed=cfg.seed,
                              offset=cfg.skip_tokens // cfg.block_size)

    # model, optimizer, and the state of a resumed run
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    model = build_model(cfg, ckpt).to(cfg.device)
    if model.config.block_size < cfg.block_size:
        raise ConfigError(f"block_size {cfg.block_size} > the model's {model.config.block_size}")
    optimizer = model.configure_optimizer(cfg.weight_decay, cfg.learning_rate, (cfg.beta1, cfg.beta2), device_type)
    scaler = torch.amp.GradScaler(device_type, enabled=cfg.dtype == 'float16')
    step, tokens_seen, saved_step = 0, 0, None
    if ckpt is not None:
        step, tokens_seen = restore_state(ckpt, optimizer, scaler, rank)
        saved_step = step
        del ckpt
    else:
        torch.manual_seed(cfg.seed + rank)  # dropout differs across ranks
    raw_model = model
    model = wrap_model(cfg, raw_model, ddp, device_type)
    if master:  # every check has passed: out_dir may change
        prepare_out_dir(cfg, step)
    log = RunLog(cfg, master)

    def checkpoint():
        state = dict(model=raw_model.state_dict(), optimizer=optimizer.state_dict(), scaler=scaler.state_dict(),
                     model_args=asdict(raw_model.config), config=asdict(cfg), step=step, tokens_seen=tokens_seen,
                     data_position=dict(micro_batch=step * grad_accum * world, epoch=loader.epoch_of(
                         step * grad_accum * world)), rng=gathered_rng())
        if master:
            save_checkpoint(ckpt_path, state)
            if step in keep_steps(cfg):
                save_checkpoint(os.path.join(cfg.out_dir, f"ckpt_step{step}.pt"), state)

    def gathered_rng():
        if not ddp:
            return [rng_state()]
        states = [None] * world
        dist.all_gather_object(states, rng_state())
        return states

    def eval_due(s):  # the final step is always evaluated, after a checkpoint of the same step
        return wants_eval and (s == max_steps or (cfg.eval_interval and s % cfg.eval_interval == 0))

    def evaluate():
        import evaluate as ev
        if master:
            result = ev.evaluate(raw_model, cfg, step, tokens_seen, cfg.device, ctx)
            print(f"eval step {step}: " + ', '.join(f"{k} {v:.4g}" for k, v in result.items()
                                                     if isinstance(v, float)), flush=True)
            log(dict(result, step=step, tokens=tokens_seen, kind='eval'))
        if ddp:
            dist.barrier()

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
    if step and eval_due(step) and not evaluated(cfg.out_dir, step):  # it failed, or was killed, before the resume
        evaluate()
    nonfinite = torch.zeros((), dtype=torch.bool, device=cfg.device)
    t0 = t_start = time.time()
    steps_timed, start_step = 0, step
    stop.install()
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
            if agreed(nonfinite, ddp) or not math.isfinite(loss_value):
                where = f"at step {step}" if not math.isfinite(loss_value) else f"before step {step}"
                raise diverged(cfg, where, ckpt_path, saved_step)
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
        stopping = stop.received()
        if step % cfg.ckpt_interval == 0 or last or step in keep_steps(cfg) or eval_due(step) or stopping:
            if agreed(nonfinite, ddp):  # never save, nor evaluate, diverged weights
                raise diverged(cfg, f"at or before step {step}", ckpt_path, saved_step)
            checkpoint()
            saved_step = step
        if stopping:
            raise Stopped(stopping, f"{signal.Signals(stopping).name} at step {step}; {ckpt_path} holds it")
        if eval_due(step):
            evaluate()
    log.close()
    if master:
        print(f"done: {max_steps} steps, {tokens_seen:,} tokens, {(time.time() - t_start) / 60:.1f} min; "
              f"checkpoint {ckpt_path}", flush=True)
    return raw_model


def resume_command(argv):
    """The command that continues this run."""
    args = [shlex.quote(a) for a in argv if not a.startswith(('--resume=', '--overwrite='))]
    return ' '.join(['python train.py'] + args + ['--resume=True'])


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    try:
        cfg = load_config(argv)
        train(cfg)
    except (ConfigError, CheckpointError, data.DataError, TrainingError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except Stopped as e:
        print(f"stopped by {e}; continue the run with: {resume_command(argv)}", file=sys.stderr)
        sys.exit(128 + e.signum)
    except Exception as e:  # evaluation (a scorer without weights, a KL server down): the checkpoint is saved
        if type(e).__name__ not in ('EvalError', 'ScorerError'):
            raise
        ckpt = os.path.join(cfg.out_dir, 'ckpt.pt')
        print(f"error during evaluation: {e}\nthe weights it evaluated are saved in {ckpt}; fix the cause, then "
              f"run the evaluation with `{resume_command(argv)}` (a run not finished then trains on) or with "
              f"`python evaluate.py --ckpt={ckpt}`", file=sys.stderr)
        sys.exit(1)


if __name__ == '__main__':
    main()
