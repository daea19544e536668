"""
The GPU check: every GPU figure of the README from one command that fits in the few minutes a lent GPU gives (at most
9 on one H100 or H200). Each part runs in a child process of its own under its own time limit, so that one that fails
or hangs is recorded, with the tail of its output, and the rest still run. It writes DIR/gpu_check.json,
DIR/gpu_check.md and DIR/gpu_check_logs.tar.gz (gpu_report.py); DIR also holds the data, checkpoints and export it
made.

    python bench.py --gpu_check --out=DIR                # on the GPU (docs/benchmarks.md: what to carry there)
    python bench.py --gpu_check --out=DIR --device=cpu   # the same parts at tiny sizes on a CPU (the tests run it)

The parts, in the order they start (plan(); another bench.py row is one more Part line); a
GPU part waits while one before it that needs the GPU alone is pending:
- prepare: PEP8 data from this machine's Python files (CPU only);
- compile:ROW: each throughput row compiled once, a few at a time, so that the timed rows find their kernels cached;
- train: GPT-2 small (T = 1024, bf16, compiled) tokens/s and MFU per objective and of Hugging Face's
  GPT2LMHeadModel, in one process, alone on the GPU (bench.py --only=train,hf);
- sample: the paper's evaluation sampling (4096 × 128 new tokens) against HF generate, alone on the GPU;
- scoring: a BERT-base classifier's tokens/s on the GPU, fp32 and bf16, against Detoxify.predict, alone on the GPU;
- repro: `repro.py pep8 --size=gpu --methods=mle,cond` on that data (evaluated at the end only), in the time left;
- objective:METHOD: each method compiled in bf16 for a few hundred steps of config/gpu_small.py: its loss falls;
- resume: the MLE run again from its midpoint checkpoint with --resume=True: the same weights, bit for bit;
- evaluate: sampling and evaluation of the MLE run, its --export_hf, and the export's logits against ours.
"""
import importlib.metadata
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace

import data
import gpu_report
from tokenizer import bpe_path

ROOT = os.path.dirname(os.path.abspath(__file__))
BUDGET_S = 540  # 9 minutes: a lent GPU's 15 minutes less its start and the transfers
OBJECTIVES = tuple(data.METHODS)
CARRY = ('pycodestyle', 'detoxify')  # what the check needs that a bare GPU machine lacks (docs/benchmarks.md), pure Python
NEEDS = ('torch', 'numpy', 'tiktoken', 'transformers', 'safetensors', 'matplotlib', 'scipy', 'tqdm') + CARRY


@dataclass
class Sizes:
    """What the parts run at: GPU (the figures) or CPU (the same commands at tiny sizes, so that they cannot rot)."""
    budget_s: int
    limit_s: int  # the most any one part may take (repro: whatever time is left)
    prepare: list  # prepare.py's source and size
    model: list  # train.py's arguments after config/gpu_small.py
    tokens_per_step: int  # of that model
    steps: int  # training steps of each objective's run
    bench: list  # bench.py's preset
    sample: list  # bench.py's sampling row
    compiled: tuple  # the throughput rows compiled beforehand ('hf': Hugging Face's)
    evaluate: list  # evaluate.py's settings
    repro: list  # repro.py's extra arguments
    at_once: dict  # how many parts of a pool run at a time (GPU: on 140 GiB, fewer on less: fewer_at_once)
    env: dict  # for the children
    exclusive: bool  # the parts that need the GPU alone get it (on a CPU nothing is timed against anything)


TINY = ['--n_layer=2', '--n_head=2', '--n_embd=32', '--block_size=64', '--batch_size=4', '--total_batch_size=4']
TINY_EVAL = ['--eval_samples=4', '--eval_max_new_tokens=8', '--eval_iters=1', '--eval_batch_size=2',
             '--eval_heldout_tokens=512']
GPU = Sizes(budget_s=BUDGET_S, limit_s=300, prepare=['--source=local+site', '--max_bytes=128M'], model=[],
            tokens_per_step=64 * 512, steps=200, bench=[], sample=['--hf_sample_batches=4096'],
            compiled=OBJECTIVES + ('hf',), evaluate=['--eval_samples=256', '--eval_max_new_tokens=128'],
            repro=['--extra=--eval_interval=0'], at_once=dict(compile=4, objective=7), env={},
            exclusive=True)
CPU = Sizes(budget_s=1800, limit_s=600, prepare=['--source=local', '--max_bytes=300K'],
            model=TINY + ['--device=cpu', '--compile=False'], tokens_per_step=4 * 64, steps=24,
            bench=['--small', '--device=cpu'], sample=[], compiled=('mle',), evaluate=TINY_EVAL + ['--device=cpu'],
            repro=['--extra=' + ' '.join(TINY + TINY_EVAL + ['--max_tokens=2048', '--kl_samples=4', '--device=cpu'])],
            at_once=dict(compile=2, objective=7), env=dict(OMP_NUM_THREADS='1'),  # many children on few cores
            exclusive=False)


@dataclass
class Part:
    """One part of the check: its commands (`python ARGV...`), run one after another in a session of their own under
    one time limit; read(part, out) turns what they left into figures, and may fail the part."""
    name: str
    commands: list
    read: object = None
    gpu: bool = True
    alone: bool = False  # a throughput figure: nothing else runs on the GPU meanwhile
    after: tuple = ()  # the parts that must have succeeded first
    pool: str = ''  # parts of one pool run at most Sizes.at_once[pool] at a time
    setup: object = None  # run here just before the commands (a file copy)
    limit_s: float = 0.0  # 0: Sizes.limit_s; never past the budget
    status: str = 'pending'  # then running, and ok, failed, timeout or skipped
    seconds: float = 0.0
    figures: dict = field(default_factory=dict)
    tail: str = ''


def plan(sizes, out):
    """The check's parts, in the order they start."""
    data_dir, runs = os.path.join(out, 'data'), os.path.join(out, 'runs')

    def rows(only, objectives=','.join(OBJECTIVES), *more):
        return ['bench.py', *sizes.bench, f'--only={only}', f'--objectives={objectives}', '--loss_chunk_sizes=0', *more]

    def training(method, name, *more):
        return ['train.py', f'config/pep8_{method}.py', 'config/gpu_small.py', *sizes.model, f'--data_dir={data_dir}',
                f'--out_dir={os.path.join(runs, name)}', f'--max_tokens={sizes.steps * sizes.tokens_per_step}',
                '--eval_interval=0', '--eval_iters=0', '--eval_samples=0', f'--keep_ckpt_steps={sizes.steps // 2}',
                f'--log_interval={max(1, sizes.steps // 10)}', *more]

    compiled = [Part(f'compile:{row}', [rows('hf', 'mle', '--steps=1', '--warmup=1') if row == 'hf' else
                                        rows('train', row, '--steps=1', '--warmup=1')], pool='compile')
                for row in sizes.compiled]
    mle, resumed, export = (os.path.join(runs, 'mle', 'ckpt.pt'), os.path.join(runs, 'mle_resumed'),
                            os.path.join(out, 'hf'))

    def here(function, *args):  # a check of this file's, in a child
        return ['-c', f"import gpu_check; gpu_check.{function}(*{list(args)!r})"]
    return [
        Part('prepare', [['prepare.py', 'pep8', *sizes.prepare, f'--out_dir={os.path.join(data_dir, "pep8")}']],
             read=read_prepare, gpu=False),
        *compiled,
        Part('train', [rows('train,hf')], read=read_bench, alone=True, after=tuple(p.name for p in compiled)),
        Part('sample', [['bench.py', *sizes.bench, '--only=sample', *sizes.sample]], read=read_bench, alone=True),
        Part('scoring', [['bench.py', *sizes.bench, '--only=scoring']], read=read_bench, alone=True, limit_s=180),
        Part('repro', [['repro.py', 'pep8', '--size=gpu', '--methods=mle,cond', f'--data_dir={data_dir}',
                        f'--results={os.path.join(out, "repro")}', *sizes.repro]], read=read_repro,
             after=('prepare',), limit_s=sizes.budget_s),
        *[Part(f'objective:{m}', [training(m, m, '--overwrite=True')], read=read_objective, after=('prepare',),
               pool='objective') for m in OBJECTIVES],
        Part('resume', [training('mle', 'mle_resumed', '--resume=True'), here('same_weights', mle, resumed)],
             read=read_last_json, after=('objective:mle',), setup=lambda: copy_midpoint(mle, resumed, sizes.steps)),
        Part('evaluate', [['evaluate.py', f'--ckpt={mle}', *sizes.evaluate, f'--out_dir={os.path.join(out, "eval")}'],
                          ['evaluate.py', f'--ckpt={mle}', f'--export_hf={export}'],
                          here('export_matches', mle, export)], read=read_evaluate, after=('objective:mle',)),
    ]


# ----------------------------------------------------------------------------------------------------------------
# The checks that run as children: each prints one JSON line

def copy_midpoint(ckpt, resumed_dir, steps):
    """The resumed run starts from the MLE run's midpoint checkpoint, in a directory of its own."""
    shutil.rmtree(resumed_dir, ignore_errors=True)
    os.makedirs(resumed_dir)
    shutil.copy(os.path.join(os.path.dirname(ckpt), f'ckpt_step{steps // 2}.pt'), os.path.join(resumed_dir, 'ckpt.pt'))


def same_weights(ckpt, resumed_dir):
    """Whether the run resumed from the midpoint ends with the weights of the run that went straight through."""
    import torch
    a = torch.load(ckpt, map_location='cpu', weights_only=True)
    b = torch.load(os.path.join(resumed_dir, 'ckpt.pt'), map_location='cpu', weights_only=True)
    diff = max((a['model'][k].float() - b['model'][k].float()).abs().max().item() for k in a['model'])
    same = all(torch.equal(a['model'][k], b['model'][k]) for k in a['model'])
    print(json.dumps(dict(bit_exact=same, max_abs_diff=diff, step=b['step'])))
    if not same:
        sys.exit(f"the resumed run's weights differ from the straight run's by up to {diff:.3g}")


def export_matches(ckpt, export_dir):
    """The logits of the --export_hf model (transformers' GPT2LMHeadModel) against ours, on the device it trained on."""
    import torch
    from transformers import GPT2LMHeadModel
    from checkpoints import load_checkpoint
    device = 'cuda' if torch.cuda.is_available() else 'cpu'
    ours = load_checkpoint(ckpt, device)[0].eval()
    theirs = GPT2LMHeadModel.from_pretrained(export_dir).to(device).eval()
    idx = torch.randint(0, data.EOS, (2, min(64, ours.config.block_size)), device=device,
                        generator=torch.Generator(device).manual_seed(0))
    with torch.no_grad():
        diff = (ours(idx)[..., :theirs.config.vocab_size] - theirs(idx).logits).abs().max().item()
    print(json.dumps(dict(export_max_abs_logit_diff=diff, device=device)))
    if not diff < 1e-3:
        sys.exit(f"the export's logits differ from ours by up to {diff:.3g}")


# ----------------------------------------------------------------------------------------------------------------
# Reading what the parts left: their figures (CheckFailed fails a part whose commands succeeded)

class CheckFailed(Exception):
    pass


def json_lines(part, out):
    """The JSON objects the part's commands printed, one a line."""
    with open(log_path(out, part), errors='replace') as f:
        lines = [line for line in f if line.startswith('{') and line.rstrip().endswith('}')]
    return [json.loads(line) for line in lines]


def read_prepare(part, out):
    with open(os.path.join(out, 'data', 'pep8', 'summary.json')) as f:
        summary = json.load(f)
    return {k: summary[k] for k in ('source', 'documents', 'tokens', 'input_bytes', 'seconds')}


def read_bench(part, out):
    rows = [r for r in json_lines(part, out) if 'bench' in r]
    if not [r for r in rows if r['bench'] != 'env']:
        raise CheckFailed('bench.py printed no measurement')
    return dict(rows=rows)


def read_objective(part, out):
    """The run's logged losses: their mean over the last third of the logged steps below that over the first third
    (one step's loss is noisy: masking and weighting make some batches count few tokens)."""
    with open(os.path.join(out, 'runs', part.name.split(':')[1], 'log.jsonl')) as f:
        steps = [r for r in map(json.loads, f) if 'loss' in r]
    third = max(1, len(steps) // 3)
    speeds = sorted(r['tokens_per_s'] for r in steps[1:]) or [steps[0]['tokens_per_s']]  # the first: the compile
    figures = dict(first_steps=f"{steps[0]['step']}-{steps[third - 1]['step']}",
                   first_loss=sum(r['loss'] for r in steps[:third]) / third,
                   last_steps=f"{steps[-third]['step']}-{steps[-1]['step']}",
                   last_loss=sum(r['loss'] for r in steps[-third:]) / third,
                   tokens_per_s=speeds[len(speeds) // 2], mfu=steps[-1].get('mfu'))
    if not figures['last_loss'] < figures['first_loss']:
        raise CheckFailed(f"the loss did not fall: {figures['first_loss']:.4f} over steps {figures['first_steps']}, "
                          f"{figures['last_loss']:.4f} over steps {figures['last_steps']}")
    return figures


def read_last_json(part, out):
    return json_lines(part, out)[-1]


def read_evaluate(part, out):
    with open(os.path.join(out, 'eval', 'eval.jsonl')) as f:
        result = json.loads(f.readlines()[-1])
    numbers = {k: v for k, v in result.items() if isinstance(v, (int, float))}
    return dict(evaluation=numbers, **json_lines(part, out)[-1])


def read_repro(part, out):
    results = os.path.join(out, 'repro')
    with open(os.path.join(results, 'results.md')) as f:
        table = f.read()
    with open(os.path.join(results, 'results.json')) as f:
        return dict(results_md=table, results=json.load(f))


# ----------------------------------------------------------------------------------------------------------------
# Running the parts

def log_path(out, part):
    return os.path.join(out, 'logs', part.name.replace(':', '_') + '.log')


class Child:
    """A part's commands running one after another, each in a session of its own (its own children too)."""

    def __init__(self, part, out, limit_s, env):
        self.part, self.out, self.t0, self.limit_s, self.env = part, out, time.time(), limit_s, env
        self.log = open(log_path(out, part), 'w')
        self.queue, self.proc = list(part.commands), None
        self.next()

    def next(self):
        argv = self.queue.pop(0)
        self.log.write(f"$ python {' '.join(argv)}\n")
        self.log.flush()
        self.proc = subprocess.Popen([sys.executable, *argv], cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True, env=dict(os.environ, PYTHONUNBUFFERED='1', **self.env))

    def poll(self):
        """None while running, else the part's outcome: 'ok', 'failed' or 'timeout'."""
        code = self.proc.poll()
        if code is None:
            if time.time() - self.t0 < self.limit_s:
                return None
            self.stop()
            return 'timeout'
        if code == 0 and self.queue:
            self.next()
            return None
        return 'ok' if code == 0 else 'failed'

    def stop(self):
        """SIGTERM to the command's session (train.py and repro.py then save and stop theirs), SIGKILL if it lingers."""
        for sig, wait_s in ((signal.SIGTERM, 20), (signal.SIGKILL, 5)):
            try:
                os.killpg(self.proc.pid, sig)
                self.proc.wait(wait_s)
                return
            except ProcessLookupError:
                return
            except subprocess.TimeoutExpired:
                continue

    def close(self):
        self.log.close()
        with open(log_path(self.out, self.part), errors='replace') as f:
            self.part.tail = f.read()[-3000:]
        self.part.seconds = round(time.time() - self.t0, 1)


def may_start(part, parts, running, sizes):
    """Whether part can start now: its dependencies have ended; at most at_once of its pool run; on the GPU (where
    sizes.exclusive), no part that needs it alone runs or is pending before it, and alone, nothing else runs on it."""
    if any(p.status in ('pending', 'running') for p in parts if p.name in part.after):
        return False
    if part.pool and sum(c.part.pool == part.pool for c in running) >= sizes.at_once[part.pool]:
        return False
    if not part.gpu or not sizes.exclusive:
        return True
    if any(p.alone and p.status in ('pending', 'running') for p in parts[:parts.index(part)]):
        return False
    on_gpu = [c.part for c in running if c.part.gpu]
    return not (any(p.alone for p in on_gpu) or (part.alone and on_gpu))


def run_parts(parts, sizes, out, report):
    """Run the parts within the budget; report() after each part ends."""
    t0, running = time.time(), []
    deadline = t0 + sizes.budget_s
    say = lambda text: print(f"[{time.time() - t0:4.0f} s] {text}", flush=True)
    try:
        while any(p.status in ('pending', 'running') for p in parts):
            for child in list(running):
                outcome = child.poll()
                if outcome:
                    running.remove(child)
                    finish(child, outcome, out)
                    say(f"{child.part.name}: {child.part.status} ({child.part.seconds:.0f} s)")
                    report()
            for part in parts:
                if part.status != 'pending' or not may_start(part, parts, running, sizes):
                    continue
                failed = [p for p in parts if p.name in part.after and p.status != 'ok']
                left = deadline - time.time()
                if failed or left < 10:
                    part.status = 'skipped'
                    part.tail = f"needs {failed[0].name}, which {failed[0].status}" if failed else 'no time left'
                    say(f"{part.name}: skipped, {part.tail}")
                    continue
                try:
                    part.setup and part.setup()
                except OSError as e:
                    part.status, part.tail = 'failed', f"its setup failed: {e}"
                    say(f"{part.name}: {part.tail}")
                    continue
                part.status, part.limit_s = 'running', round(min(part.limit_s or sizes.limit_s, left))
                running.append(Child(part, out, part.limit_s, sizes.env))
                say(f"{part.name}: started (at most {part.limit_s} s)")
            time.sleep(0.2)
    except KeyboardInterrupt:
        for child in running:
            child.stop()
            finish(child, 'stopped', out)
        report()
        raise


def finish(child, outcome, out):
    child.close()
    part = child.part
    part.status = outcome
    if outcome == 'ok' and part.read:
        try:
            part.figures = part.read(part, out)
        except CheckFailed as e:
            part.status, part.tail = 'failed', f"{e}\n{part.tail}"
        except (OSError, ValueError, KeyError, IndexError) as e:
            part.status, part.tail = 'failed', f"its results could not be read: {e!r}\n{part.tail}"


# ----------------------------------------------------------------------------------------------------------------
# The command

def what_to_carry():
    """Lines saying what the check needs, what a bare GPU machine must be brought (the wheels of CARRY, the GPT-2
    BPE), and what this Python lacks."""
    import importlib.util
    version = lambda name: importlib.metadata.version(name) if importlib.util.find_spec(name) else None
    found = {name: version(name) for name in NEEDS}
    pins = ' '.join(f"{name}=={found[name] or '?'}" for name in CARRY)
    bpe = bpe_path()
    return [f"gpu_check needs: {', '.join(f'{n} {v}' for n, v in found.items() if v)}",
            f"carry to a bare GPU machine (docs/benchmarks.md): the wheels of {pins} "
            f"(python -m pip download --no-deps --only-binary=:all: -d .carry/wheels {pins}) and the GPT-2 BPE, "
            f"{bpe} ({'here' if os.path.exists(bpe) else 'missing here: python tokenizer.py fetch'}), "
            f"pointed to there by PHF_GPT2_BPE"], [n for n, v in found.items() if not v]


def main(out, device):
    """python bench.py --gpu_check --out=OUT [--device=cpu]."""
    lines, missing = what_to_carry()
    print('\n'.join(lines), flush=True)
    if missing:
        sys.exit(f"error: {', '.join(missing)} missing in this Python; install or carry them first (above)")
    if os.path.isdir(out) and os.listdir(out):
        sys.exit(f"error: {out} is not empty: give --out a new folder")
    if os.path.exists(bpe_path()):
        os.environ['PHF_GPT2_BPE'] = bpe_path()  # the children never try a download (tokenizer.get_tokenizer)
    if device == 'cpu':
        import devices
        sizes, machine = CPU, devices.describe('cpu')
    else:
        machine, gib = describe_gpu()
        sizes = fewer_at_once(GPU, gib)
    os.makedirs(os.path.join(out, 'logs'))
    parts, t0 = plan(sizes, out), time.time()
    meta = dict(command=' '.join(['python bench.py'] + sys.argv[1:]), device=machine, at_once=sizes.at_once,
                started=time.strftime('%Y-%m-%d %H:%M %Z'),
                budget_s=sizes.budget_s, seconds=0)

    def report():
        meta['seconds'] = time.time() - t0
        gpu_report.write(parts, out, meta)
    try:
        run_parts(parts, sizes, out, report)
    finally:
        report()
        gpu_report.pack_logs(out)
    failed = [p.name for p in parts if p.status != 'ok']
    print(f"gpu_check: {len(parts) - len(failed)} of {len(parts)} parts ok"
          + (f"; not ok: {', '.join(failed)}" if failed else '') + f"; {out}/gpu_check.md", flush=True)
    return not failed


def describe_gpu():
    """(the GPU and torch version in one line, its memory in GiB or None), from nvidia-smi: this process leaves CUDA
    to its children."""
    try:
        name, mib = subprocess.run(['nvidia-smi', '--query-gpu=name,memory.total', '--format=csv,noheader,nounits'],
                                   capture_output=True, text=True, timeout=30).stdout.splitlines()[0].split(', ')
        gpu, gib = name, int(mib) / 1024
    except (OSError, IndexError, ValueError, subprocess.TimeoutExpired):
        gpu, gib = 'a CUDA device', None
    return f"{gpu}, torch {importlib.metadata.version('torch')}", gib


def fewer_at_once(sizes, gib):
    """The pools scaled to a GPU of gib GiB (an H100's 80: about half as many as on an H200's 140)."""
    share = min(1.0, gib / 139) if gib else 1.0
    return replace(sizes, at_once={pool: max(1, round(n * share)) for pool, n in sizes.at_once.items()})
