"""
Settings: EvalConfig (what an evaluation reads) and TrainConfig, which builds on it with every training setting, each
with its default; read from config files and --key=value arguments, each checked (type, range, device, evaluation
settings, data folder) before any training time is spent. evaluate.py builds an EvalConfig from a checkpoint's
settings. Config files are short Python files of assignments to the keys of TrainConfig, applied left to right; they
run as code.
"""
import ast
import inspect
import math
import os
import textwrap
import traceback
import typing
from dataclasses import asdict, dataclass, fields
from typing import Optional

import torch

import data
import remote
import scorers
import transforms


@dataclass
class EvalConfig:
    # the run evaluated (a checkpoint brings these)
    task: str = 'pep8'  # a key of data.TASKS
    method: str = 'mle'  # a key of data.METHODS
    data_dir: str = 'data'  # prepared splits are read from data_dir/task/{train,val}
    out_dir: str = 'out'
    block_size: int = 1024
    cond_threshold: Optional[float] = None  # None: the task's; also mask's (a token counts iff its segment's <= this)
    cond_bins: int = 2  # cond: control tokens for this many score bins (2: the paper's; transforms.grade_edges)
    seed: int = 42  # the data order, dropout, and (with init_seed_offset 0) the initial weights; samples
    compile: Optional[bool] = None  # None: on for CUDA; compiles the model and the loss as one graph
    # evaluation
    eval_iters: int = 20  # validation batches; 0: no likelihood of val text (val loss, held-out gap, control gap)
    eval_heldout_tokens: int = 524_288  # the held-out gap (heldout.py) over this many tokens of the val split
    eval_batch_size: int = 16
    eval_samples: int = 256  # samples per scenario; 0: validation loss only
    eval_max_new_tokens: int = 0  # 0: the task's
    eval_scenarios: str = ''  # comma-separated; '': the task's
    eval_prompts: str = ''  # JSONL of prompts for a prompted scenario
    kl_reference: str = ''  # '', a ckpt.pt of ours, or 'openai:MODEL'
    kl_base_url: str = ''
    kl_samples: int = 256
    kl_timeout: float = remote.TIMEOUT_S  # seconds a request to a KL reference server may take, retries included
    eval_guidance: float = 0.0  # conditional models: sample with guidance γ away from <|misaligned|> (model.sample)


@dataclass
class TrainConfig(EvalConfig):
    # what to train (task, method, data_dir, out_dir: in EvalConfig)
    init_from: str = 'scratch'  # 'scratch', a ckpt.pt of ours (finetuning), or a Hugging Face GPT-2 (dir or hub name)
    resume: bool = False  # continue the run in out_dir from its ckpt.pt
    overwrite: bool = False  # a fresh run into an out_dir that holds a run deletes that run first (else: refused)
    skip_tokens: int = 0  # start this far into the data order (finetuning continues where pretraining stopped)
    # model (block_size: in EvalConfig)
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True
    # method hyperparameters; None takes the task's value from data.TASKS (cond_threshold, cond_bins: in EvalConfig)
    filter_threshold: Optional[float] = None
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
    # system (seed, compile: in EvalConfig)
    device: str = 'auto'  # 'auto', 'cpu', 'cuda', 'cuda:1', ...
    dtype: str = 'auto'  # float32, bfloat16, float16; 'auto': bf16 on a GPU (else fp16), a CPU with native bf16; fp32
    loss_chunk_size: int = 0  # 0: plain logits; N: log-probs N tokens at a time, never the whole (B, T, vocab) logits
    init_seed_offset: int = 0  # initial weights from seed + this: a second run of a recipe on the same data order
    # logging, evaluation (what is evaluated: EvalConfig), checkpoints
    log_interval: int = 10
    ckpt_interval: int = 1000
    keep_ckpt_steps: str = ''  # comma-separated steps whose checkpoint is also kept as ckpt_step{N}.pt
    eval_interval: int = 1000  # 0: evaluate only at the end
    wandb_project: str = ''  # log to wandb too: config, curve, metrics, sample tables (runs.RunLog)


class ConfigError(Exception):
    pass


class EvalError(Exception):
    """An evaluation that cannot run (a bad scenario, a reference API that keeps failing); says what to do."""


def eval_config(settings, **overrides):
    """The EvalConfig of a run from its settings (a checkpoint's config: training settings too, which are left out;
    those it lacks, an older checkpoint's, take their defaults), then overrides."""
    known = {f.name for f in fields(EvalConfig)}
    return EvalConfig(**{**{k: v for k, v in settings.items() if k in known}, **overrides})


def steps_in_budget(cfg):
    """The optimizer steps of a training run: as many whole steps of total_batch_size × block_size tokens as
    max_tokens holds."""
    return cfg.max_tokens // (cfg.total_batch_size * cfg.block_size)


SCENARIOS = ('unconditional', 'misaligned', 'functions', 'prompted')  # what evaluate.py can sample, see there


def eval_scenarios(cfg):
    """The scenarios an evaluation samples: eval_scenarios if set, else the task's, 'misaligned' for conditional
    models and 'prompted' when eval_prompts is set."""
    if cfg.eval_scenarios:
        return [s.strip() for s in cfg.eval_scenarios.split(',')]
    conditional = data.METHODS[cfg.method].conditional
    return list(data.get_task(cfg.task).scenarios) + (['misaligned'] if conditional else []) + (
        ['prompted'] if cfg.eval_prompts else [])


def settings_help():
    """Every setting with its type, default and comment: EvalConfig's lines, then TrainConfig's, as `train.py --help`
    prints them."""
    def body(cls):
        source = inspect.getsource(cls)
        return textwrap.dedent(source[source.index('\n', source.index('class ')) + 1:].rstrip())
    return body(EvalConfig) + '\n' + body(TrainConfig)


# The range of every numeric setting, checked by load_config: keys, test, what the test asks for
RANGES = (
    ('n_layer n_head n_embd block_size batch_size total_batch_size max_tokens log_interval ckpt_interval '
     'eval_batch_size kl_samples', lambda v: v >= 1, 'at least 1'),
    ('skip_tokens loss_chunk_size eval_interval eval_iters eval_heldout_tokens eval_samples eval_max_new_tokens seed '
     'init_seed_offset learning_rate min_lr weight_decay grad_clip ul_alpha', lambda v: v >= 0, '0 or more'),
    ('dropout drop_token_fraction warmup_frac awr_alpha', lambda v: 0 <= v <= 1, 'between 0 and 1'),
    ('beta1 beta2', lambda v: 0 <= v < 1, 'at least 0 and below 1'),
    ('awr_beta awr_clip_weight_max kl_timeout', lambda v: v > 0, 'above 0'),
    ('cond_bins', lambda v: 2 <= v <= 2 + len(data.GRADE_IDS), f'between 2 and {2 + len(data.GRADE_IDS)}'),
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


def parse_override(arg, keys=None, more=''):
    """(key, value) of one --key=value argument, the value typed as TrainConfig's field says (a literal, never run):
    the one parser of train.py's and evaluate.py's arguments. keys: the keys allowed (default: all of TrainConfig's);
    more: what else the command takes, for the message that names an unknown key."""
    key, eq, text = arg[2:].partition('=')
    if not eq:
        raise ConfigError(f"{arg}: expected --key=value")
    if key not in (keys or TrainConfig.__dataclass_fields__):
        known = ', '.join(keys) + more if keys else 'the fields of TrainConfig in settings.py'
        raise ConfigError(f"{arg}: unknown key {key!r}; the keys are {known}")
    try:
        value = text if TrainConfig.__dataclass_fields__[key].type is str else ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = text  # a bare string such as --task=pii
    return key, _check_type(key, value, arg)


def load_config(argv):
    """TrainConfig from config files and --key=value arguments, applied left to right."""
    known = {f.name for f in fields(TrainConfig)}
    values = {}
    for arg in argv:
        if arg.startswith('--'):
            key, value = parse_override(arg)
            values[key] = value
        else:
            for key, value in read_config_file(arg).items():
                if key not in known:
                    raise ConfigError(f"{arg}: unknown key {key!r}; the keys are the fields of TrainConfig in "
                                      f"settings.py")
                values[key] = _check_type(key, value, arg)
    cfg = TrainConfig(**values)
    if cfg.task not in data.TASKS:
        raise ConfigError(f"task {cfg.task!r}: choose one of {', '.join(data.TASKS)}")
    defaults = method_defaults(cfg, data.TASKS[cfg.task])
    for key, value in defaults.items():
        if getattr(cfg, key) is None:
            setattr(cfg, key, value)
    check_config(cfg)
    return cfg


def method_defaults(cfg, task):
    """The task's method settings (data.TASKS); for data scored on another scale than the task's scorer's (its train
    split's header), thresholds from that split's score quantiles (transforms.scale_thresholds). A threshold the run
    needs (cond_threshold always: evaluation reads it) that neither gives is refused."""
    defaults = {key: getattr(task, key) for key in ('filter_threshold', 'cond_threshold', 'drop_token_fraction',
                                                    'ul_threshold', 'ul_soft')}
    split = os.path.join(cfg.data_dir, cfg.task, 'train')
    scorer = scorers.split_scorer(split, task.scorer)
    if scorers.on_scale_of(scorer, task.scorer):
        return defaults
    defaults.update(transforms.scale_thresholds(task, data.PreparedData(split)))
    for key in ['cond_threshold'] + [f'{cfg.method}_threshold'] * (cfg.method in ('ul', 'filter')):
        if defaults[key] is None and getattr(cfg, key) is None:
            raise ConfigError(f"{key}: {split} was scored by {scorer}, not on the {task.name} scorer's scale, so the "
                              f"task's threshold does not apply, and the paper's share of aligned segments for "
                              f"{task.name} is not known; pass --{key} (prepare.py printed the scores' quantiles)")
    return defaults


def check_config(cfg):
    """Every setting in its range, and a device this machine has: refused before anything runs."""
    if cfg.method not in data.METHODS:
        raise ConfigError(f"method {cfg.method!r}: choose one of {', '.join(data.METHODS)}")
    if cfg.lr_schedule not in ('linear', 'cosine'):
        raise ConfigError(f"lr_schedule {cfg.lr_schedule!r}: choose 'linear' or 'cosine'")
    if cfg.dtype not in ('auto', 'float32', 'bfloat16', 'float16'):
        raise ConfigError(f"dtype {cfg.dtype!r}: choose auto, float32, bfloat16 or float16")
    check_ranges(cfg)
    if cfg.cond_bins != 2 and not data.METHODS[cfg.method].conditional:
        raise ConfigError(f"cond_bins {cfg.cond_bins}: graded control tokens are for method 'cond'")
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


def check_ranges(cfg):
    """Every number of cfg (a TrainConfig, or an EvalConfig: its fields) finite and in its range (RANGES)."""
    for key, value in asdict(cfg).items():
        if type(value) is float and not math.isfinite(value):
            raise ConfigError(f"{key} {value!r}: must be a finite number")
    for keys, ok, wanted in RANGES:
        for key in keys.split():
            if hasattr(cfg, key) and not ok(getattr(cfg, key)):
                raise ConfigError(f"{key} {getattr(cfg, key)!r}: must be {wanted}")


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


def scenario_problem(cfg, name):
    """Why scenario `name` cannot be sampled with cfg's settings, or '': checked before a run starts
    (check_eval_config) and again by each evaluation (evaluate.scenario_prompts)."""
    if name not in SCENARIOS:
        return f"unknown scenario {name!r}; choose from {', '.join(SCENARIOS)}"
    if name == 'misaligned' and not data.METHODS[cfg.method].conditional:
        return "scenario 'misaligned' (samples after <|misaligned|>) is for method 'cond' only"
    if name == 'prompted' and not cfg.eval_prompts:
        return "scenario 'prompted' needs --eval_prompts=PATH, a JSONL file of prompts"
    return ''


GUIDANCE_PROBLEM = "eval_guidance: guided sampling needs a conditional model (method 'cond')"


def check_eval_config(cfg):
    """An evaluation's settings (an EvalConfig, or the TrainConfig built on it), refused before anything runs: the
    ranges, the scenarios, guidance, the files it names."""
    check_ranges(cfg)
    for name in eval_scenarios(cfg) if cfg.eval_samples else []:
        if scenario_problem(cfg, name):
            raise ConfigError(f"eval_scenarios: {scenario_problem(cfg, name)}")
    if cfg.eval_guidance and not data.METHODS[cfg.method].conditional:
        raise ConfigError(GUIDANCE_PROBLEM)
    if cfg.eval_prompts and not os.path.isfile(cfg.eval_prompts):
        raise ConfigError(f"eval_prompts {cfg.eval_prompts}: file not found")
    if cfg.kl_reference and not cfg.kl_reference.startswith('openai:') and not os.path.isfile(cfg.kl_reference):
        raise ConfigError(f"kl_reference {cfg.kl_reference}: file not found; pass a ckpt.pt of ours or openai:MODEL")


def check_eval_settings(cfg):
    """What a training run's evaluations will need, checked before its first step rather than when the first one
    runs: check_eval_config, and the val split they read."""
    check_eval_config(cfg)
    if cfg.eval_iters or (cfg.eval_samples and 'functions' in eval_scenarios(cfg)):
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
