"""
Benchmarks: training throughput per objective against Hugging Face's GPT-2, sampling against HF `generate`,
the data loader, and the scorers. One JSON line per measurement on stdout.

    python bench.py                                  # GPU: GPT-2 small, T = 1024, bf16, compiled
    python bench.py --batch_sizes=16,32,64           # each micro-batch size (an OOM is reported, not fatal)
    python bench.py --loss_chunk_sizes=0,2048,8192   # each objective with plain logits and in chunks
    python bench.py --eager_loss                     # the model compiled alone, the loss eager
    python bench.py --only=loss --device=cpu --batch_sizes=8 --loss_n_embd=128   # loss memory on CPU
    python bench.py --cpu_demo --only=train,hf,sample  # the demo's CPU model: ours vs HF, training and sampling
    python bench.py --cpu_demo --only=train,hf --dtypes=float32,bfloat16 --compile   # each dtype, compiled
    python bench.py --cpu_demo --only=train,sample --default_allocator   # ... without devices.keep_freed_memory
    python bench.py --cpu_demo --only=sample --ckpt=out/repro/pii_cpu/seed42/mle/ckpt.pt   # the demo's trained model
    python bench.py --cpu_demo --only=sample --samples=128 --new_tokens=100 --logit_scale=6   # sharper: a wide nucleus
    python bench.py --small                          # a tiny model for a few steps on CPU (what CI runs)
    python bench.py --gpu_check --out=DIR            # every GPU figure in one command (gpu_check.py)
    python bench.py --only=scoring --device=cpu      # scoring: our classifier path vs Detoxify.predict, per core
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext

import numpy as np
import torch

import data
import devices
import objectives
import train
from checkpoints import CheckpointError, load_checkpoint
from model import TEMPERATURE, TOP_P, GPT, GPTConfig, sample


def emit(row):
    print(json.dumps(row), flush=True)
    return row


def sync(device):
    if device.startswith('cuda'):
        torch.cuda.synchronize(device)  # that GPU's (the current one for 'cuda')


def timed_steps(step_fn, warmup, steps, device):
    for _ in range(warmup):  # includes torch.compile
        step_fn()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step_fn()
    sync(device)
    return (time.perf_counter() - t0) / steps


def bench_train(args, objective, batch_size, impl='phf', loss_chunk_size=0, dtype=''):
    """Tokens/s of forward + backward + AdamW on random tokens for one objective. Ours compiles the model with the
    loss, as train.py does (train.ModelWithLoss), or with --eager_loss the model alone."""
    device, T = args.device, args.block_size
    torch._dynamo.reset()  # each row compiles afresh, as a training run does, and never meets the recompile limit
    torch.manual_seed(0)
    device_type = 'cuda' if device.startswith('cuda') else 'cpu'
    dtype = dtype or devices.default_dtype(device_type)  # as train.py's dtype='auto' (CPU: bf16 where native)
    ctx = torch.autocast(device_type, dtype=getattr(torch, dtype), enabled=dtype != 'float32')
    x = torch.randint(0, data.EOS, (batch_size, T), device=device)
    y = torch.randint(0, data.EOS, (batch_size, T), device=device)
    rewards = -torch.rand(batch_size, T, device=device) * 0.01
    if impl == 'phf':
        model = GPT(GPTConfig(block_size=T, n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd,
                              value_head=data.METHODS[objective].value_head)).to(device)
        cfg = train.load_config([f'--method={objective}', '--task=pep8', f'--loss_chunk_size={loss_chunk_size}'])
        flops_per_token = model.flops_per_token()
        variant = dict(loss_chunk_size=loss_chunk_size, loss_compiled=args.compile and not args.eager_loss)
        if args.eager_loss:
            module, loss_fn = model, lambda m: train.compute_loss(cfg, m, x, y, rewards)
        else:
            module, loss_fn = train.ModelWithLoss(cfg, model), lambda m: m(x, y, rewards)
    else:  # Hugging Face GPT2LMHeadModel with sdpa attention, the stack the paper's code used
        from transformers import GPT2Config, GPT2LMHeadModel
        model = GPT2LMHeadModel(GPT2Config(n_positions=T, n_layer=args.n_layer, n_head=args.n_head,
                                           n_embd=args.n_embd, attn_implementation='sdpa')).to(device)
        flops_per_token = GPT(GPTConfig(block_size=T, n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd,
                                        vocab_size=50257)).flops_per_token()
        variant = {}
        module, loss_fn = model, lambda m: m(input_ids=x, labels=x).loss
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.startswith('cuda'))
    compiled = torch.compile(module) if args.compile else module

    def step():
        with ctx:
            loss = loss_fn(compiled)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    if device.startswith('cuda'):
        torch.cuda.reset_peak_memory_stats()
    try:
        dt = timed_steps(step, args.warmup, args.steps, device)
    except torch.OutOfMemoryError:
        return emit(dict(bench='train', impl=impl, objective=objective, batch_size=batch_size, **variant,
                         error='OOM'))
    tok_s = batch_size * T / dt
    peak = devices.peak_flops(device)
    return emit(dict(bench='train', impl=impl, objective=objective, batch_size=batch_size, compile=args.compile,
                     dtype=dtype, **variant, tokens_per_s=round(tok_s),
                     mfu=round(flops_per_token * tok_s / peak, 4) if peak else None,
                     peak_mem_gb=round(torch.cuda.max_memory_allocated() / 2 ** 30, 2)
                     if device.startswith('cuda') else None))


def bench_loss(args, batch_size):
    """Seconds and peak memory of the MLE loss + backward alone, from hidden states (batch_size · block_size,
    n_embd) through the (50304, n_embd) output embedding, with plain logits and in chunks. On CPU each variant runs
    in a fresh process whose malloc returns every block over 64 KiB to the OS when freed, so that the peak RSS is
    the peak of live memory (glibc would otherwise keep freed blocks up to 32 MiB for reuse)."""
    for chunk_size in args.loss_chunk_sizes:
        shape = (batch_size * args.block_size, args.loss_n_embd or args.n_embd, chunk_size, args.loss_steps)
        if args.device.startswith('cuda'):
            loss_cost(args.device, *shape, args.compile)
            continue
        out = subprocess.run([sys.executable, '-c', f"import bench; bench.loss_cost('cpu', *{shape}, False)"],
                             cwd=os.path.dirname(os.path.abspath(__file__)), capture_output=True, text=True,
                             env=dict(os.environ, MALLOC_MMAP_THRESHOLD_='65536'))
        if out.returncode:
            sys.exit(out.stderr)
        emit(json.loads(out.stdout))


def loss_cost(device, n_tokens, n_embd, chunk_size, steps, compile):
    """One bench_loss row: bf16 autocast (and torch.compile if asked) on CUDA, fp32 on CPU. The peak counts what
    the timed steps allocate beyond the inputs and their gradients: CUDA's allocator statistics, or on CPU (Linux)
    the peak RSS, restarted from the current RSS after the warm-up step."""
    cuda = device.startswith('cuda')
    torch.manual_seed(0)
    hidden = torch.randn(1, n_tokens, n_embd, device=device, requires_grad=True)
    weight = (0.02 * torch.randn(50304, n_embd, device=device)).requires_grad_()
    targets = torch.randint(0, data.EOS, (1, n_tokens), device=device)
    hidden.grad, weight.grad = torch.zeros_like(hidden), torch.zeros_like(weight)
    ctx = torch.autocast('cuda', dtype=torch.bfloat16) if cuda else nullcontext()

    def loss_fn(hidden, weight, targets):
        logits = objectives.ChunkedLogits(hidden, weight, chunk_size) if chunk_size else hidden @ weight.t()
        return objectives.mle(logits, targets)

    compiled = torch.compile(loss_fn) if compile else loss_fn

    def step():
        with ctx:
            loss = compiled(hidden, weight, targets)
        loss.backward()

    step()  # warm-up, and the compile
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    else:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')  # VmHWM := VmRSS: the peak of the imports and of the warm-up does not count
        rss_kib = lambda key: next(int(line.split()[1]) for line in open('/proc/self/status') if line.startswith(key))
        rss_before = rss_kib('VmRSS:')
    dt = timed_steps(step, 0, steps, device)
    peak_mb = (torch.cuda.max_memory_allocated() - torch.cuda.memory_allocated()) / 2 ** 20 if cuda else \
        (rss_kib('VmHWM:') - rss_before) / 2 ** 10
    return emit(dict(bench='loss', objective='mle', n_tokens=n_tokens, n_embd=n_embd, loss_chunk_size=chunk_size,
                     compile=compile, seconds=round(dt, 4), peak_mb=round(peak_mb)))


def sampling_model(args, device):
    """The model the sampling rows time: --ckpt (a trained model: a random one's next-token distribution is flat,
    the nucleus nearly everything), else a random one of the bench's size, its logits sharpened by --logit_scale;
    bf16 on CUDA."""
    torch.manual_seed(0)
    if args.ckpt:
        model = load_checkpoint(args.ckpt, device)[0]
    else:
        model = GPT(GPTConfig(block_size=args.block_size, n_layer=args.n_layer, n_head=args.n_head,
                              n_embd=args.n_embd)).to(device).eval()
        with torch.no_grad():
            model.transformer.ln_f.weight.mul_(args.logit_scale)
    return model.to(torch.bfloat16) if device.startswith('cuda') else model


def bench_sample(args):
    """The paper's evaluation (n samples of max_new_tokens, temperature 0.7, top-p 0.9): our sampler, then Hugging
    Face's `generate` on the same weights (exported with hf.export) at the same settings."""
    from hf import export
    from transformers import GPT2LMHeadModel
    device, n, new = args.device, args.samples, args.new_tokens
    model = sampling_model(args, device)
    prompts = [[data.EOS]] * n
    # a fixed length: a fair timing
    kwargs = dict(temperature=TEMPERATURE, top_p=TOP_P, min_new_tokens=new, eos_id=data.EOS, device=device)
    warm_up = device.startswith('cuda')  # compile and CUDA start-up; on CPU a warm-up would only double the time
    if warm_up:
        sample(model, prompts[:args.sample_batch], new, **kwargs, batch_size=args.sample_batch)
        sync(device)
    t0 = time.perf_counter()
    sample(model, prompts, new, **kwargs, batch_size=args.sample_batch)
    sync(device)
    ours = time.perf_counter() - t0
    emit(dict(bench='sample', impl='phf', samples=n, new_tokens=new, batch_size=args.sample_batch,
              seconds=round(ours, 3), tokens_per_s=round(n * new / ours)))
    output_layer_floor(model, min(args.sample_batch, n), ours * min(args.sample_batch, n) / (n * new), device)
    with tempfile.TemporaryDirectory() as tmp:
        export(model, tmp)
        hf = GPT2LMHeadModel.from_pretrained(tmp, attn_implementation='sdpa').to(device).eval()
    best = None
    for batch in args.hf_sample_batches:
        batch = min(batch, n)
        ids = torch.full((batch, 1), data.EOS, device=device)
        run = lambda n_new: hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True,
                                        temperature=TEMPERATURE, top_p=TOP_P, top_k=0, max_new_tokens=n_new,
                                        min_new_tokens=n_new, pad_token_id=data.EOS)
        with torch.no_grad():
            if warm_up:  # CUDA's start-up: generate is not compiled, a few tokens do
                run(4)
                sync(device)
            t0 = time.perf_counter()
            for _ in range(n // batch):
                run(new)
            sync(device)
        seconds = time.perf_counter() - t0
        best = min(best or seconds, seconds)
        emit(dict(bench='sample', impl='hf_generate', samples=n, new_tokens=new, batch_size=batch,
                  seconds=round(seconds, 3), tokens_per_s=round(n * new / seconds)))
    emit(dict(bench='sample', impl='ratio', speedup_vs_best_hf=round(best / ours, 2)))


def output_layer_floor(model, batch, step_s, device):
    """A decode step's time (a whole sampling run's, per token and batch) against its output layer's matmul alone,
    (batch, n_embd) @ (n_embd, vocab) in the model's dtype: how far the step is from what the vocabulary costs."""
    weight = model.lm_head.weight.detach()
    hidden = torch.randn(batch, weight.size(1), device=device, dtype=weight.dtype)
    matmul_s = timed_steps(lambda: hidden @ weight.t(), 2, 20, device)
    emit(dict(bench='sample', impl='decode_step_vs_output_matmul', batch_size=batch,
              decode_step_ms=round(1e3 * step_s, 2), output_matmul_ms=round(1e3 * matmul_s, 2),
              ratio=round(step_s / matmul_s, 2)))


def bench_guided(args):
    """What guided sampling costs: the paper's evaluation after <|aligned|>, unguided, then with guidance 1 (each
    row's <|misaligned|> twin in the same batch), same model, same settings."""
    device, n, new = args.device, args.samples, args.new_tokens
    model = sampling_model(args, device)
    kwargs = dict(temperature=TEMPERATURE, top_p=TOP_P, min_new_tokens=new, eos_id=data.EOS, device=device,
                  batch_size=args.sample_batch, blocked_tokens=(data.ALIGNED, data.MISALIGNED))
    seconds = {}
    for guidance in (0.0, 1.0):
        if device.startswith('cuda'):  # compile and CUDA start-up
            sample(model, [[data.EOS, data.ALIGNED]] * args.sample_batch, new, **kwargs, guidance=guidance,
                   negative_prompts=[[data.EOS, data.MISALIGNED]] * args.sample_batch)
        sync(device)
        t0 = time.perf_counter()
        sample(model, [[data.EOS, data.ALIGNED]] * n, new, **kwargs, guidance=guidance,
               negative_prompts=[[data.EOS, data.MISALIGNED]] * n)
        sync(device)
        seconds[guidance] = time.perf_counter() - t0
        emit(dict(bench='sample', impl=f'phf_guidance_{guidance:g}', samples=n, new_tokens=new,
                  batch_size=args.sample_batch, seconds=round(seconds[guidance], 3),
                  tokens_per_s=round(n * new / seconds[guidance])))
    emit(dict(bench='sample', impl='ratio', guided_time_vs_unguided=round(seconds[1.0] / seconds[0.0], 2)))


def bench_loader(args):
    """Tokens/s of BlockLoader on a prepared split of random documents (memmapped, with per-token rewards)."""
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        with data.DatasetWriter(f"{tmp}/train", task='pep8', split='train') as w:
            for _ in range(args.loader_docs):
                k = int(rng.integers(5, 60))
                lens = rng.integers(1, 20, k)
                w.add_arrays(np.concatenate([[data.EOS], rng.integers(0, data.EOS, int(lens.sum()) - 1)]), lens,
                             rng.random(k).astype(np.float32), np.array([k]), np.array([0.0], np.float32))
        loader = data.BlockLoader(data.PreparedData(f"{tmp}/train"), args.block_size, args.loader_batch)
        loader.get(0)
        t0 = time.perf_counter()
        n = 20
        for g in range(1, n + 1):
            loader.get(g)
        dt = time.perf_counter() - t0
    emit(dict(bench='data_loader', batch_size=args.loader_batch, block_size=args.block_size,
              tokens_per_s=round(n * args.loader_batch * args.block_size / dt)))


def parse_args(argv):
    """The arguments, with the preset of the mode (GPT-2 small on a GPU, --cpu_demo, --small) filled in."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--small', action='store_true', help='tiny model, few steps (CPU, for CI)')
    p.add_argument('--cpu_demo', action='store_true',
                   help="the demo's model (config/cpu_small.py: 4 x 128, T = 128, batch 8) on CPU; sampling "
                        "256 x 126 new tokens")
    p.add_argument('--device', default='', help="default: cuda where there is one (else --small or --cpu_demo's cpu)")
    p.add_argument('--batch_sizes', default='32')
    p.add_argument('--objectives', default='mle,cond,ul,awr')
    p.add_argument('--dtypes', default='', help="the training rows' dtypes, comma-separated (float32, bfloat16); "
                                                "default: what train.py's dtype='auto' picks here")
    p.add_argument('--compile', action=argparse.BooleanOptionalAction, default=None,
                   help='compile the training rows (default: on CUDA only)')
    p.add_argument('--loss_chunk_sizes', help="TrainConfig.loss_chunk_size values, comma-separated (0: plain; "
                                              "default: the mode's)")
    p.add_argument('--eager_loss', action='store_true', help='compile the model without the loss')
    p.add_argument('--loss_n_embd', type=int, help="the loss rows' hidden width (default: the model's)")
    p.add_argument('--only', default='train,hf,loss,sample,guided,loader,scoring')
    p.add_argument('--ckpt', default='', help='sample from this checkpoint of ours instead of a random model')
    p.add_argument('--default_allocator', action='store_true',
                   help="CPU: leave glibc's malloc as it is (no devices.keep_freed_memory), to measure what it gives")
    p.add_argument('--steps', type=int, help="the training rows' timed steps (default: the mode's)")
    p.add_argument('--warmup', type=int, help="the training rows' steps before timing (default: the mode's)")
    p.add_argument('--samples', type=int, help="the sampling rows' prompts (default: the mode's)")
    p.add_argument('--new_tokens', type=int, help="the sampling rows' new tokens per prompt (default: the mode's)")
    p.add_argument('--hf_sample_batches', help="HF generate's batch sizes, comma-separated (default: the mode's)")
    p.add_argument('--logit_scale', type=float, default=1.0,
                   help="the random sampling model's final LayerNorm gain times this: sharper next-token "
                        "distributions, as a trained model's (a random one's are nearly flat)")
    p.add_argument('--gpu_check', action='store_true', help='run gpu_check.py (--out, --device=cpu: its CPU mode)')
    p.add_argument('--out', default='', help='--gpu_check: the folder it writes (new or empty)')
    args = p.parse_args(argv)
    if args.gpu_check:
        if not args.out:
            p.error('--gpu_check needs --out=DIR, a new folder')
        return args
    if not (args.device or torch.cuda.is_available() or args.small or args.cpu_demo):
        p.error("no GPU here, and the default is GPT-2 small at T = 1024 on one (on a CPU it needs over 20 GB): run "
                "`python bench.py --cpu_demo` for the demo's model, or say --device=cpu to run it anyway")
    args.device = args.device or ('cuda' if torch.cuda.is_available() else 'cpu')
    cuda = args.device.startswith('cuda')
    gpt2_small = dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, warmup=10, steps=30, samples=4096,
                      new_tokens=128, sample_batch=4096, hf_sample_batches=[1024, 4096], loader_docs=20000,
                      loader_batch=32, compile=cuda, loss_steps=10 if cuda else 2,
                      loss_chunk_sizes='0,4096')
    tiny = dict(n_layer=2, n_head=2, n_embd=64, block_size=64, warmup=1, steps=2, samples=8, new_tokens=8,
                sample_batch=8, hf_sample_batches=[8], loader_docs=200, loader_batch=4,
                compile=False, loss_steps=1, loss_chunk_sizes='0,48')  # 128 positions: chunks of 48, 48, 32
    cpu_demo = dict(n_layer=4, n_head=4, n_embd=128, block_size=128, warmup=3, steps=20, samples=256,
                    new_tokens=126, sample_batch=256, hf_sample_batches=[256], loader_docs=20000, loader_batch=8,
                    compile=False, loss_steps=2, loss_chunk_sizes='0')
    preset = tiny if args.small else cpu_demo if args.cpu_demo else gpt2_small
    for k, v in preset.items():
        if getattr(args, k, None) is None:  # what the command line says wins
            setattr(args, k, v)
    if isinstance(args.hf_sample_batches, str):
        args.hf_sample_batches = [int(b) for b in args.hf_sample_batches.split(',')]
    if args.cpu_demo:
        args.device, args.batch_sizes = 'cpu', '8'
    if args.device == 'cpu' and not args.default_allocator:
        devices.keep_freed_memory()  # as train.py and evaluate.py do on CPU
    if args.small:
        args.batch_sizes = '2'
    args.loss_chunk_sizes = [int(c) for c in args.loss_chunk_sizes.split(',')]
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.gpu_check:
        import gpu_check
        return gpu_check.main(args.out, args.device)
    only = set(args.only.split(','))
    emit(dict(bench='env', device=torch.cuda.get_device_name(args.device) if args.device.startswith('cuda')
              else platform.processor() or 'cpu', torch=torch.__version__, python=sys.version.split()[0],
              n_layer=args.n_layer, n_embd=args.n_embd, block_size=args.block_size,
              cpu_native_bf16=devices.cpu_has_native_bf16()))
    for batch_size in (int(b) for b in args.batch_sizes.split(',')):
        for dtype in args.dtypes.split(','):
            if 'train' in only:
                for objective in args.objectives.split(','):
                    for loss_chunk_size in args.loss_chunk_sizes:
                        bench_train(args, objective, batch_size, loss_chunk_size=loss_chunk_size, dtype=dtype)
            if 'hf' in only:
                bench_train(args, 'mle', batch_size, impl='hf_gpt2', dtype=dtype)
        if 'loss' in only:
            bench_loss(args, batch_size)
    if 'sample' in only:
        bench_sample(args)
    if 'guided' in only:
        bench_guided(args)
    if 'loader' in only:
        bench_loader(args)
    if 'scoring' in only:
        import bench_scoring  # on demand: it loads transformers and detoxify
        bench_scoring.bench_scoring(args)


if __name__ == '__main__':
    try:
        if main() is False:  # a part of --gpu_check failed
            sys.exit(1)
    except CheckpointError as e:  # --ckpt missing or corrupt
        sys.exit(f"error: {e}")
