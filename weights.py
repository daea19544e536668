"""
Weights from files others made, read without running their code. A torch file is a pickle, and a pickle can call any
Python function while it loads: code_it_would_run reads which globals a file's pickle asks for, without loading it,
and says in words what loading it would call; read_weights loads tensors from safetensors (which holds data only) or
from a torch file that asks for nothing but tensors and plain values (torch.load with weights_only=True).
checkpoints.py refuses a ckpt.pt, and the classifier scorers (classifiers.py) a weights file, with the same words.
This module imports torch but not the model, so a scorer can load weights without importing model.py.
"""
import pickletools
import re
import zipfile

import torch

# what pickles a numpy array: the array type, its dtype and the function that rebuilds it from bytes
NUMPY_ARRAY_GLOBALS = re.compile(r'numpy(\._core|\.core)?\.multiarray\._reconstruct|numpy\.ndarray|numpy\.dtype'
                                 r'|numpy\.dtypes\.\w+DType')
LEGACY_PICKLES = 4  # torch's format before zip: a magic number, a protocol, system facts, then the object


def unsafe_globals(path):
    """The Python globals a torch file's pickle asks for beyond what torch's weights-only loader allows (tensors and
    plain containers), read without loading anything, in either of torch's formats (zip, or the older row of
    pickles); ValueError for a file that is neither."""
    if zipfile.is_zipfile(path):
        return torch.serialization.get_unsafe_globals_in_checkpoint(path)
    from torch._weights_only_unpickler import _get_allowed_globals  # what get_unsafe_globals_in_checkpoint allows
    allowed = _get_allowed_globals()
    return sorted(set(name for name in legacy_globals(path) if name not in allowed))


def legacy_globals(path):
    """The globals the pickles of a torch file in the older format name (pickletools reads opcodes, runs nothing)."""
    names, strings = [], []
    with open(path, 'rb') as f:
        try:
            for _ in range(LEGACY_PICKLES):
                memo = {}
                for op, arg, _ in pickletools.genops(f):
                    if op.name == 'GLOBAL':
                        names.append(arg.replace(' ', '.'))
                    elif isinstance(arg, str) and 'UNICODE' in op.name:
                        strings.append(arg)
                    elif op.name in ('BINPUT', 'LONG_BINPUT', 'MEMOIZE') and strings:
                        memo[len(memo) if arg is None else arg] = strings[-1]
                    elif op.name in ('BINGET', 'LONG_BINGET') and arg in memo:
                        strings.append(memo[arg])
                    elif op.name == 'STACK_GLOBAL':
                        names.append('.'.join(strings[-2:]))
        except Exception as e:  # not a pickle, or cut short
            raise ValueError(f"not a torch file ({type(e).__name__}: {e})") from None
    return names


def code_it_would_run(path, needs=None):
    """'' for a torch file whose pickle holds data only (tensors, plain containers, numpy arrays); else what loading it
    would call, in words, for a refusal (either of torch's formats). needs: its unsafe_globals, where already read."""
    needs = unsafe_globals(path) if needs is None else needs
    code = [name for name in needs if not NUMPY_ARRAY_GLOBALS.fullmatch(name)]
    return f"loading it would call {', '.join(code)}, which could run anything" if code else ''


def read_weights(path, what):
    """The tensors (and plain values) in a .safetensors file or a torch file, on the CPU. A torch file whose pickle
    would call code is refused, one line naming it: ValueError '{path}: refused: ...; {what} needs only tensors and
    plain values'."""
    if path.endswith('.safetensors'):
        from safetensors.torch import load_file
        return load_file(path)
    needs = unsafe_globals(path)
    if needs:
        why = code_it_would_run(path, needs) or f"it holds numpy arrays ({', '.join(needs)})"
        raise ValueError(f"{path}: refused: {why}; {what} needs only tensors and plain values")
    return torch.load(path, map_location='cpu', weights_only=True)
