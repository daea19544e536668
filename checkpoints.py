"""
Checkpoints (ckpt.pt): what train.py saves and every script reads back. A checkpoint holds tensors and plain values
only (the RNG states as tensors, ints and tuples, never numpy arrays), so it is read with
torch.load(weights_only=True): a file someone sent cannot run code when it is evaluated, finetuned or resumed.

    model         the GPT's state dict                 optimizer, scaler   their state dicts
    model_args    GPTConfig's fields                   config              TrainConfig's fields
    step, tokens_seen                                  data_position       micro-batch and epoch of the data order
    data          the splits' fingerprints             rng                 one RNG state per process
    wandb_run_id  or None

A file that needs any other Python global is refused before anything in it runs, whichever of torch's formats it is
in (weights.code_it_would_run says what it would call).
"""
import os
import pickle
import random

import numpy as np
import torch

import data
from model import GPT, GPTConfig
from weights import code_it_would_run, unsafe_globals

CHECKPOINT_KEYS = ('model', 'model_args', 'config', 'step', 'tokens_seen')  # in every ckpt.pt train.py writes


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read, used or saved, named with what to do."""


def save_checkpoint(path, state):
    """Write-then-rename (data.write_atomically): a crash or a full disk during the save leaves the previous
    checkpoint intact."""
    try:
        data.write_atomically(path, lambda f: torch.save(state, f))
    except OSError as e:  # ENOSPC, EDQUOT, EIO: the run cannot go on, but nothing saved before is lost
        raise CheckpointError(f"{path}: not saved, {e.strerror or e}; the checkpoint there before (if any) is "
                              f"unchanged: free disk space (or fix the cause), then resume with --resume=True") from None


def rng_state():
    """This process's RNG states, as tensors and plain values (what weights_only loading allows)."""
    name, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    return dict(python=random.getstate(),
                numpy=dict(name=name, keys=torch.from_numpy(keys.astype(np.int64)), pos=int(pos),
                           has_gauss=int(has_gauss), cached_gaussian=float(cached_gaussian)),
                torch=torch.get_rng_state(),
                cuda=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)


def set_rng_state(state):
    random.setstate(state['python'])
    n = state['numpy']
    np.random.set_state((n['name'], n['keys'].numpy().astype(np.uint32), n['pos'], n['has_gauss'],
                         n['cached_gaussian']))
    torch.set_rng_state(state['torch'])
    if state['cuda'] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])


def _load(path):
    """torch.load with weights_only=True; a file that asks for any other Python global is refused in words: what
    loading it would call (weights.code_it_would_run), or the numpy arrays it holds."""
    try:
        return torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as e:
        try:
            needs = unsafe_globals(path)
        except ValueError:
            raise e from None  # not a pickle that asks for globals: damaged (read_checkpoint says so)
        if not needs:
            raise
        why = code_it_would_run(path, needs) or f"it holds numpy arrays ({', '.join(needs)})"
        raise CheckpointError(f"{path}: refused: {why}; a phf checkpoint holds tensors and plain values only") \
            from None


def read_checkpoint(path):
    """The dict in a ckpt.pt written by train.py, loaded on the CPU; CheckpointError names the file when it is
    missing, empty, truncated, not one of ours, or would run code (train.py and evaluate.py read checkpoints with
    it)."""
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: checkpoint not found")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"{path}: empty file (an interrupted copy?), not a checkpoint; use another checkpoint")
    try:
        ckpt = _load(path)
    except CheckpointError:
        raise
    except OSError as e:
        raise CheckpointError(f"{path}: cannot be read, {e.strerror or e}") from None
    except Exception as e:  # a damaged zip or pickle fails in many ways (RuntimeError, EOFError, UnpicklingError...)
        reason = str(e).split('\n')[0].split('. ')[0]
        raise CheckpointError(f"{path}: truncated or corrupt ({type(e).__name__}: {reason}); use another "
                              f"checkpoint") from None
    missing = [k for k in CHECKPOINT_KEYS if k not in ckpt] if isinstance(ckpt, dict) else list(CHECKPOINT_KEYS)
    if missing:
        raise CheckpointError(f"{path}: not a phf checkpoint (it has no {', '.join(missing)}); pass a ckpt.pt "
                              f"written by train.py")
    return ckpt


def load_checkpoint(path, device='cpu'):
    """(model in eval mode on device, the checkpoint dict) from a ckpt.pt written by train.py, wherever it was saved."""
    ckpt = read_checkpoint(path)
    model = GPT(GPTConfig(**ckpt['model_args']))
    model.load_state_dict(ckpt['model'])
    return model.to(device).eval(), ckpt
