"""
What the machine is: the dtype 'auto' means on it and the one evaluation runs in, the peak FLOPS that MFU divides by,
the one-line description that results records carry, the CPU allocator setting that training and sampling make, and
how a process joins its torchrun group. Imported by train.py, evaluate.py, bench.py, repro.py and staging.py, so
none of them imports another for these facts.
"""
import ctypes
import os
import platform

import torch

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


def cpu_has_native_bf16():
    """AVX512-BF16 or AMX: bf16 matmuls run natively (docs/benchmarks.md); without them bf16 autocast is emulated,
    many times slower than fp32."""
    return any(getattr(torch.cpu, name, lambda: False)() for name in ('_is_avx512_bf16_supported',
                                                                      '_is_amx_tile_supported'))


def default_device():
    return 'cuda' if torch.cuda.is_available() else 'cpu'


def default_dtype(device_type):
    """What dtype='auto' means here: bf16 on a GPU that has it (else fp16) and on a CPU with native bf16, else fp32."""
    if device_type == 'cuda':
        return 'bfloat16' if torch.cuda.is_bf16_supported() else 'float16'
    return 'bfloat16' if cpu_has_native_bf16() else 'float32'


def evaluation_dtype(device_type):
    """Evaluation's dtype, its scorer's too: bf16 on a GPU that has it, else float32; on a CPU always float32, so that
    its figures do not depend on the CPU's instruction set."""
    return 'bfloat16' if device_type == 'cuda' and torch.cuda.is_bf16_supported() else 'float32'


def init_process_group(backend, **kwargs):
    """torch.distributed's, with torch.distributed.nn imported first. That module binds the default group into its
    functions' default arguments when it is imported, and torch._dynamo imports it (an optimizer's constructor does, a
    model's loading may): imported after the group exists, it keeps the group alive past destroy_process_group, so
    gloo's worker threads run into the interpreter's exit, where one that still drops a tensor aborts the process
    ("terminate called without an active exception")."""
    import importlib

    import torch.distributed as dist
    importlib.import_module('torch.distributed.nn')  # binds None: there is no group yet
    dist.init_process_group(backend, **kwargs)


def cpu_name():
    """The CPU's model name as /proc/cpuinfo gives it (the platform's processor string elsewhere)."""
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe(device_type):
    """One line: the GPU, or the CPU with its core count and the vector instructions that decide its speed."""
    if device_type == 'cuda':
        return f"{torch.cuda.get_device_name()}, torch {torch.__version__}"
    isa = [torch.backends.cpu.get_cpu_capability()] + [name for name, check in (
        ('AVX512-BF16', '_is_avx512_bf16_supported'), ('AMX', '_is_amx_tile_supported'))
        if getattr(torch.cpu, check, lambda: False)()]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
    return f"{cpu_name()}, {cores} cores, {' + '.join(isa)}, torch {torch.__version__}"


def keep_freed_memory():
    """Have glibc keep freed memory for reuse instead of returning each block over 32 MB to the OS: otherwise every
    training step's and every sampling step's (B, T, vocab) tensors are page-faulted in afresh, which on a 2-core CPU
    is about half of a training step (docs/benchmarks.md). Costs a resident set that stays at its peak. True if set
    (Linux with glibc); harmless to call twice."""
    try:
        libc = ctypes.CDLL('libc.so.6')
    except OSError:
        return False
    m_trim_threshold, m_mmap_max = -1, -4  # malloc.h
    return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2 ** 31 - 1))  # an int
