"""
Weights from files others made, read without running their code. A torch file is a pickle, and a pickle can call any
Python function while it loads: code_it_would_run reads which globals a file's pickle asks for, without loading it,
and says in words what loading it would call; read_weights loads tensors from safetensors (which holds data only) or
from a torch file that asks for nothing but tensors and plain values (torch.load with weights_only=True).
checkpoints.py refuses a ckpt.pt, and the classifier scorers (classifiers.py) a weights file, with the same words.
This module imports torch but not the model, so a scorer can load weights without importing model.py.
"""
import re

import torch

# what pickles a numpy array: the array type, its dtype and the function that rebuilds it from bytes
NUMPY_ARRAY_GLOBALS = re.compile(r'numpy(\._core|\.core)?\.multiarray\._reconstruct|numpy\.ndarray|numpy\.dtype'
                                 r'|numpy\.dtypes\.\w+DType')


def code_it_would_run(path, needs=None):
    """'' for a torch file whose pickle holds data only (tensors, plain containers, numpy arrays); else what loading it
    would call, in words, for a refusal. needs: the globals its pickle asks for, where already read."""
    if needs is None:
        needs = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    code = [name for name in needs if not NUMPY_ARRAY_GLOBALS.fullmatch(name)]
    return f"loading it would call {', '.join(code)}, which could run anything" if code else ''


def read_weights(path, what):
    """The tensors (and plain values) in a .safetensors file or a torch file, on the CPU. A torch file whose pickle
    would call code is refused, one line naming it: ValueError '{path}: refused: ...; {what} needs only tensors and
    plain values'."""
    if path.endswith('.safetensors'):
        from safetensors.torch import load_file
        return load_file(path)
    code = code_it_would_run(path)
    if code:
        raise ValueError(f"{path}: refused: {code}; {what} needs only tensors and plain values")
    return torch.load(path, map_location='cpu', weights_only=True)
