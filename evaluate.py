"""
Evaluation (reference §5): the paper's generate-and-score metrics (samples from model.sample), KL from a reference
LM, validation loss, the held-out gap (heldout.py), the control-token gap, plots (plots.py), and export to Hugging Face
format (hf.py).

    python evaluate.py --ckpt=out/pep8_cond/ckpt.pt                    # -> out_dir/eval_step{N}.json, eval.jsonl
    python evaluate.py --ckpt=out/pep8_cond/ckpt.pt --eval_samples=4096 --kl_reference=openai:davinci-002
    python evaluate.py --ckpt=out/pep8_cond/ckpt.pt --kl_reference=out/pep8_mle/ckpt.pt   # one of ours as reference
    python evaluate.py --export_hf=out/pep8_cond/hf --ckpt=out/pep8_cond/ckpt.pt   # a Hugging Face model directory
    python evaluate.py --plot out/pep8_mle out/pep8_cond --out=out/pep8
    python evaluate.py --ckpt=tomekkorbak/hungry_saha --eval_samples=1024   # a released model (hub name or directory)
    python evaluate.py --ckpt=out/gpt2_hf --task=pii --method=cond          # any HF GPT-2: say its task (and if cond)

train.py calls evaluate() every eval_interval steps with its TrainConfig, which builds on settings.EvalConfig; here
an EvalConfig is made of the checkpoint's settings and the --key=value overrides.

Metrics, per scenario S: S/score (the paper's misalignment score: the mean), S/score_max@25, S/num_hits (share above
the task's threshold), S/distinct-1 and -2, S/length (characters), S/truncated (share that hit the token budget),
S/samples_per_s. PEP8 also: S/score_complete_lines (and its max@25, num_hits): the same without the cut last line of
truncated samples, which pycodestyle otherwise counts; S/degenerate: the share left out of it as too short. Then
val_loss (plain cross-entropy on the val split; val_loss_aligned: on its aligned segments' tokens) and kl
(KL(reference || model), nats per sample).
"""
import json
import os
import re
import sys
import textwrap
import time
from contextlib import nullcontext
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

import data
import devices
import heldout
import hf
import plots
import scorers
from checkpoints import CheckpointError, load_checkpoint
from kl import KL_MAX_TOKENS, kl_divergence
from model import logits_only, sample
from settings import (GUIDANCE_PROBLEM, ConfigError, EvalConfig, EvalError, check_eval_config, check_ranges,
                      eval_config, eval_scenarios, parse_override, scenario_problem)
from transforms import bin_of, cond_edges
from tokenizer import decode, get_tokenizer

PROMPTED_MAX_NEW_TOKENS = 256  # the original's PEP8 functions scenario: max_length 272 including the prompt
MAX_PROMPT_TOKENS = 128  # longer prompts (e.g. signatures with long docstrings) are skipped; block_size/4 if smaller
SAVED_SAMPLES = 256  # texts per scenario in eval_step{N}.json (all the scores are kept, for intervals)
MIN_COMPLETE_CHARS = 20  # PEP8 complete-lines variant: a shorter remainder is degenerate, not scored


CONTROL_GAP_SEGMENTS = 256  # held-out segments of each kind for control_token_gap


@torch.no_grad()
def control_token_gap(model, val_dir, edges, n_segments=CONTROL_GAP_SEGMENTS, device=None):
    """Whether a conditional model learned its control tokens, however good its samples are: for a held-out segment
    s after its context c (the document before it, each earlier segment behind its true control token),

        gap(s) = [log p(s | c, <|aligned|>) − log p(s | c, <|misaligned|>)] / |s|      (nats per token)

    averaged over the first n_segments segments scored <= edges[0], the threshold ('aligned': positive if learned)
    and the first n_segments above it ('misaligned': negative if learned), in document order. Missing kinds are
    left out. edges: the bins' upper edges (transforms.grade_edges; [threshold] for the paper's two tokens): the
    context's tokens are those of the segments' bins, and <|aligned|>, <|misaligned|> are the best and worst."""
    tokens_of_bin = data.control_tokens(len(edges) + 1)
    split, T = data.PreparedData(val_dir), model.config.block_size
    seg_starts = np.asarray(split.seg_starts, dtype=np.int64)
    pairs = {'aligned': [], 'misaligned': []}  # (context + <|aligned|> + s, context + <|misaligned|> + s, |s|)
    for d in range(split.n_documents):
        if all(len(p) >= n_segments for p in pairs.values()):
            break
        start, end = split.doc_token_starts(d, d + 1)
        tokens = np.asarray(split.tokens[start:end]).tolist()
        first, last = np.searchsorted(seg_starts, [start, end])
        bounds = (seg_starts[first:last] - start).tolist() + [end - start]
        context = tokens[:1]  # the document's <|endoftext|>, which opens its first segment
        for k in range(len(bounds) - 1):
            segment = hf.ids_for_vocab(tokens[bounds[k] + (k == 0):bounds[k + 1]], model.config.vocab_size)
            grade = bin_of(split.seg_scores[first + k], edges)
            kind = 'aligned' if grade == 0 else 'misaligned'
            if 0 < len(segment) <= T // 2 and len(pairs[kind]) < n_segments:
                c = context[-(T - len(segment)):]  # the model reads all but the last token: T at most
                pairs[kind].append((c + [data.ALIGNED] + segment, c + [data.MISALIGNED] + segment, len(segment)))
            context += [tokens_of_bin[grade]] + segment
    device = device or next(model.parameters()).device
    result = {}
    for kind, p in pairs.items():
        gaps = []
        for with_aligned, with_misaligned, n in p:  # a pair at a time: equal lengths, no padding
            x = torch.tensor([with_aligned, with_misaligned], device=device)
            with torch.autocast(torch.device(device).type, enabled=False):  # fp32, as sequence_logprobs
                hidden = logits_only(model(x[:, :-1], return_hidden=True))[:, -n:]  # only s's positions need logits
                logits = model.lm_head(hidden)[..., :model.config.vocab_size].float()
            logp = F.log_softmax(logits, -1).gather(-1, x[:, -n:, None]).squeeze(-1).sum(1)
            gaps.append((logp[0] - logp[1]).item() / n)
        if gaps:
            result[f'control_gap_{kind}'] = float(np.mean(gaps))
    return result


@torch.no_grad()
def val_loss(model, split, block_size, batch_size, n_batches, device, threshold=None):
    """Plain next-token cross-entropy, whatever the training objective (so methods compare), over the first
    n_batches·batch_size blocks of a prepared split in order: the same tokens at every evaluation. {'val_loss': ...},
    with a threshold also 'val_loss_aligned': over the targets of segments scored <= threshold only (the text mask is
    trained to write); not for a model without our space runs, whose re-split tokens no longer match the scores."""
    split = split if isinstance(split, data.PreparedData) else data.PreparedData(split)
    loader = data.BlockLoader(split, block_size, batch_size)
    n = min(n_batches * batch_size, loader.n_blocks)
    resplit = model.config.vocab_size < data.VOCAB_SIZE
    threshold = None if resplit else threshold
    sums = torch.zeros(3, device=device)  # the loss over all targets, over the aligned ones, and how many those are
    for b in range(0, n, batch_size):
        x, y, rewards = loader.batch(range(b, min(b + batch_size, n)))
        if resplit:  # without our space runs: each run as single spaces
            rows = [hf.ids_for_vocab(np.append(a, c[-1]).tolist(), model.config.vocab_size)[:block_size + 1]
                    for a, c in zip(x, y)]
            x, y = np.array(rows)[:, :-1], np.array(rows)[:, 1:]
        x, y = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
        logits = logits_only(model(x))[..., :model.config.vocab_size]  # the distribution we sample from
        losses = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction='none')
        aligned = torch.from_numpy(-rewards.flatten() <= (np.inf if threshold is None else threshold)).to(device)
        sums += torch.stack([losses.sum(), losses[aligned].sum(), aligned.sum()])
    aligned_loss = dict(val_loss_aligned=(sums[1] / sums[2]).item()) if threshold is not None and sums[2] else {}
    return dict(val_loss=sums[0].item() / (n * block_size), **aligned_loss)


# ----------------------------------------------------------------------------------------------------------------
# Metrics (reference §5.1)

def max_at_k(scores, k=25):
    """Expected maximum score over k samples: the samples split into k interleaved rows, the maximum of each
    column, averaged (the original's get_max_at_k). With fewer than k samples: the maximum of all of them."""
    s = np.asarray(scores, dtype=float)
    if len(s) < k:
        return float(s.max())
    return float(s[:len(s) // k * k].reshape(k, -1).max(0).mean())


def distinct_n(texts, n):
    """Distinct whitespace n-grams / all n-grams per text, averaged over the texts that have any."""
    ratios = []
    for text in texts:
        words = text.split()
        grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
        if grams:
            ratios.append(len(set(grams)) / len(grams))
    return float(np.mean(ratios)) if ratios else 0.0


def score_metrics(scores, threshold, suffix=''):
    s = np.asarray(scores, dtype=float)
    return {f'score{suffix}': float(s.mean()), f'score{suffix}_max@25': max_at_k(s),
            f'num_hits{suffix}': float((s > threshold).mean())}


def complete_lines(text):
    """A code sample cut at the token budget, without its cut last line and trailing blank lines: what pycodestyle
    reports about the cut (W292, W391, E501 or E999 on the broken line) is not the model's style
    (docs/evaluation.md)."""
    return re.sub(r'\n(?:[ \t]*\n)+\Z', '\n', text[:text.rfind('\n') + 1])


# ----------------------------------------------------------------------------------------------------------------
# Scenarios: 'unconditional' (every task), 'functions' (PEP8: signatures from the held-out split, scored with the
# continuation), 'prompted' (a JSONL file of prompts, e.g. RealToxicityPrompts' challenging subset)

def load_prompts(path):
    """Prompt texts from a JSONL file whose lines are strings, or objects with 'prompt' (a string, or {'text'} as in
    RealToxicityPrompts) or 'text'."""
    prompts = []
    with open(path) as f:
        for line in f:
            if line.strip():
                r = json.loads(line)
                r = r.get('prompt', r.get('text')) if isinstance(r, dict) else r
                prompts.append(r['text'] if isinstance(r, dict) else r)
    return prompts


_SIGNATURE = re.compile(r'^([ \t]*)def \w+\((?:[^()]|\([^()]*\))*\)[^:\n]*:[ \t]*\n'  # def f(a, b=g()) -> T:
                        r'(?:\1[ \t]+[rRbBuU]?("""|\'\'\')[\s\S]*?\2[ \t]*\n)?', re.M)  # its docstring, if any


@lru_cache(maxsize=4)
def function_prompts(val_dir, max_prompts=4096):
    """Function signatures, each with its docstring if it has one, dedented, from the held-out split's documents in
    order: the original's CodeSearchNet 'functions' prompts (reference §5.1) with no download."""
    split, found = data.PreparedData(val_dir), []
    for i in range(split.n_documents):
        text = decode(split.document(i)[0].tolist())
        found += [textwrap.dedent(m.group(0)) for m in _SIGNATURE.finditer(text)]
        if len(found) >= max_prompts:
            break
    return tuple(found[:max_prompts])


def scenario_prompts(cfg, scenario, n, max_tokens):
    """n prompts (token lists) for a scenario: the prompts of at most max_tokens tokens in a seeded order, cycled
    (the original drew them with replacement, and ignored n for conditional models, reference §7.8)."""
    if scenario_problem(cfg, scenario):
        raise EvalError(scenario_problem(cfg, scenario))
    if scenario in ('unconditional', 'misaligned'):
        return [[]] * n
    texts = function_prompts(os.path.join(cfg.data_dir, cfg.task, 'val')) if scenario == 'functions' else \
        load_prompts(cfg.eval_prompts)
    enc = get_tokenizer()
    prompts = [p for p in (enc.encode_ordinary(t) for t in texts) if len(p) <= max_tokens]
    order = np.random.default_rng(cfg.seed).permutation(len(prompts))
    return [prompts[order[i % len(prompts)]] for i in range(n)] if prompts else []


def generate_and_score(model, cfg, scenario, scorer, device, compile=None):
    """(metrics, the first SAVED_SAMPLES samples, every sample's score) of one scenario: cfg.eval_samples samples,
    scored (reference §5.1)."""
    task, enc = data.get_task(cfg.task), get_tokenizer()
    limit = min(MAX_PROMPT_TOKENS, cfg.block_size // 4)
    prompts = scenario_prompts(cfg, scenario, cfg.eval_samples, limit)
    if not prompts:
        print(f"warning: scenario {scenario!r} has no prompts of at most {limit} tokens; skipped", flush=True)
        return {}, [], []
    cond = data.METHODS[cfg.method].conditional
    # conditional models sample given <|aligned|> (§1.3); the 'misaligned' scenario asks for what they learned to
    # put after <|misaligned|>: the gap between the two is the most direct sign the control tokens mean something
    prefix, blocked = data.sampling_controls(cfg.task, cfg.method, scenario)
    shown = [enc.decode(p) for p in prompts]
    guidance = cfg.eval_guidance if cond and scenario != 'misaligned' else 0.0
    if cfg.eval_guidance and not cond:
        raise EvalError(GUIDANCE_PROBLEM)
    prompts = [hf.ids_for_vocab(p, model.config.vocab_size) for p in prompts]
    negative = [[data.EOS, data.MISALIGNED] + p for p in prompts] if guidance else None
    prompts = [prefix + p for p in prompts]
    default = task.max_new_tokens if scenario in ('unconditional', 'misaligned') else \
        min(task.max_new_tokens, PROMPTED_MAX_NEW_TOKENS)
    max_new = min(cfg.eval_max_new_tokens or default, cfg.block_size - max(len(p) for p in prompts))
    print(f"evaluation: sampling {len(prompts)} texts, scenario {scenario}", file=sys.stderr, flush=True)
    t0 = time.time()
    new = sample(model, prompts, max_new, eos_id=data.EOS, blocked_tokens=blocked, seed=cfg.seed, device=device,
                 compile=compile, guidance=guidance, negative_prompts=negative)
    seconds = time.time() - t0
    conts = [decode(toks) for toks in new]  # control tokens stripped
    scored = [p + c for p, c in zip(shown, conts)] if scenario == 'functions' else conts  # §3 prompted scoring
    scores = _scores(scorer, scored)
    metrics = dict(score_metrics(scores, hit_threshold(cfg)), **{
        'distinct-1': distinct_n(conts, 1), 'distinct-2': distinct_n(conts, 2),
        'length': float(np.mean([len(c) for c in conts])),
        'truncated': float(np.mean([len(t) == max_new for t in new])), 'samples_per_s': len(new) / seconds,
        'max_new_tokens': max_new})
    if task.segment == 'lines':  # PEP8: also without the cut (complete_lines); degenerate remainders set apart
        variant = [complete_lines(s) if len(t) == max_new else s for s, t in zip(scored, new)]
        n_prompt = [len(p) if scenario == 'functions' else 0 for p in shown]  # the model's part must be long enough
        ok = [v for v, k in zip(variant, n_prompt) if len(v[k:].strip()) >= MIN_COMPLETE_CHARS]
        metrics['degenerate'] = 1 - len(ok) / len(variant)
        if ok:
            metrics.update(score_metrics(_scores(scorer, ok), hit_threshold(cfg), '_complete_lines'))
    samples = [dict(prompt=p, text=c, score=s) for p, c, s in zip(shown, conts, scores)][:SAVED_SAMPLES]
    return {f'{scenario}/{k}': v for k, v in metrics.items()}, samples, scores


_scorer_cache = {}


def prepared_with(cfg):
    """The scorer the run's training split was scored by (its header's description), else the task's."""
    return scorers.split_scorer(os.path.join(cfg.data_dir, cfg.task, 'train'), data.get_task(cfg.task).scorer)


def hit_threshold(cfg):
    """num_hits counts the samples scored above this: the task's, for data on its scorer's scale; for data scored on
    another scale, the run's cond_threshold (above it, a segment of its training data was misaligned)."""
    task = data.get_task(cfg.task)
    return task.hit_threshold if scorers.on_scale_of(prepared_with(cfg), task.scorer) else cfg.cond_threshold


def _scores(scorer, texts):
    """Our scorers through scorers.score_texts (a process pool for the slow ones); any object with .score works."""
    if isinstance(scorer, scorers.Scorer):
        return scorers.score_texts(scorer, texts)[0]
    return scorer.score(texts)


# ----------------------------------------------------------------------------------------------------------------
# One evaluation: validation loss, every scenario, KL; written to out_dir

def evaluate(model, cfg, step, tokens_seen, device, autocast_ctx=nullcontext(), scorer=None):
    """Metrics of a model at a step; appends them to cfg.out_dir/eval.jsonl and writes eval_step{step}.json (with
    samples and every score). cfg: a settings.EvalConfig, or the TrainConfig that builds on it. scorer: any object
    with .score(texts) (default: the task's, from scorers.py). A part that fails (a scorer without weights, a KL
    server down, a missing file) is recorded in result['errors'] with a warning, and the other parts are still
    computed and written."""
    task = data.get_task(cfg.task)
    device, val_dir = torch.device(device), os.path.join(cfg.data_dir, cfg.task, 'val')
    result, samples, scores = dict(step=step, tokens_seen=tokens_seen, task=cfg.task, method=cfg.method), {}, {}
    heldout_sums = {}  # per-document sums of the held-out gap, for intervals (heldout.gap_interval)
    if cfg.eval_guidance:
        result['guidance'] = cfg.eval_guidance

    def part(name, compute):
        try:
            result.update(compute())
        except (EvalError, data.DataError, scorers.ScorerError, CheckpointError, OSError) as e:
            result.setdefault('errors', {})[name] = f"{type(e).__name__}: {e}"
            print(f"warning: evaluation at step {step}: {name} failed ({e}); the rest is kept", file=sys.stderr,
                  flush=True)

    def load_scorer():
        nonlocal scorer
        if scorer is None:  # the one the training data was scored by (on the task's scale: the task's, as the paper)
            name = scorers.evaluation_scorer(prepared_with(cfg), task.scorer)
            if name not in _scorer_cache:  # loaded once per process (detoxify's weights are large)
                dtype = devices.evaluation_dtype(devices.default_device())  # where a model scorer runs
                _scorer_cache[name] = scorers.get_scorer(name, dtype=dtype)
            scorer = _scorer_cache[name]
        return {}

    def heldout_part():
        split, threshold = data.PreparedData(val_dir), cfg.cond_threshold
        threshold = task.cond_threshold if threshold is None else threshold
        ids = data.control_tokens(cfg.cond_bins)  # best first
        controls = dict(heldout=ids[0], heldout_misaligned=ids[-1]) if conditional else dict(heldout=None)
        metrics = {}
        for prefix, control in controls.items():
            figures, heldout_sums[prefix] = heldout.heldout_gap(model, split, cfg.eval_heldout_tokens, threshold,
                                                                control, cfg.eval_batch_size, device)
            metrics.update({f'{prefix}/{k}': v for k, v in figures.items()})
        return metrics

    def scenario_part(scenario):
        metrics, samples[scenario], scores[scenario] = generate_and_score(model, cfg, scenario, scorer, device,
                                                                          cfg.compile)
        return metrics

    conditional = data.METHODS[cfg.method].conditional
    was_training = model.training
    model.eval()
    try:
        with autocast_ctx:
            if cfg.eval_iters:
                part('val_loss', lambda: val_loss(model, val_dir, cfg.block_size, cfg.eval_batch_size, cfg.eval_iters,
                                                  device, threshold=cfg.cond_threshold))
            # not for a model without our space runs, whose re-split tokens no longer match the segments' scores
            if cfg.eval_iters and cfg.eval_heldout_tokens and model.config.vocab_size >= data.VOCAB_SIZE:
                part('heldout', heldout_part)
            if cfg.eval_iters and conditional:
                part('control_gap', lambda: control_token_gap(model, val_dir, cond_edges(
                    cfg.task, cfg.data_dir, cfg.cond_threshold, cfg.cond_bins), device=device))
            if cfg.eval_samples:
                part('scorer', load_scorer)
                for scenario in eval_scenarios(cfg) if scorer is not None else []:
                    part(scenario, lambda: scenario_part(scenario))
            if cfg.kl_reference:
                part('kl', lambda: dict(kl=kl_divergence(
                    model, cfg.kl_reference, cfg.kl_samples, conditional=conditional,
                    lines=task.segment == 'lines', base_url=cfg.kl_base_url,
                    max_tokens=min(KL_MAX_TOKENS, cfg.block_size - 2), batch_size=cfg.eval_batch_size, device=device,
                    guidance=cfg.eval_guidance, timeout=cfg.kl_timeout)))
    finally:
        model.train(was_training)
    os.makedirs(cfg.out_dir, exist_ok=True)
    data.write_json(os.path.join(cfg.out_dir, f'eval_step{step}.json'), dict(result, samples=samples, scores=scores,
                                                                            heldout=heldout_sums))
    with open(os.path.join(cfg.out_dir, 'eval.jsonl'), 'a') as f:
        f.write(json.dumps(result) + '\n')
    return result


# ----------------------------------------------------------------------------------------------------------------

# the fields of EvalConfig that --key=value may set over a checkpoint's own (not what the model is: task, method, ...),
# and the command's own keys
COMMAND_KEYS = ', device, ckpt, export_hf (and task, method for a Hugging Face model)'
OVERRIDABLE = ('eval_iters', 'eval_heldout_tokens', 'eval_batch_size', 'eval_samples', 'eval_max_new_tokens',
               'eval_scenarios', 'eval_prompts', 'kl_reference', 'kl_base_url', 'kl_samples', 'kl_timeout', 'out_dir',
               'data_dir', 'seed', 'eval_guidance')


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    opts = dict(a[2:].split('=', 1) for a in argv if a.startswith('--') and '=' in a)
    try:
        if '--plot' in argv:
            for path in plots.plot([a for a in argv if not a.startswith('--')], opts.get('out', 'out/plot')):
                print(path)
            return
        if 'ckpt' not in opts:  # the usage: on stdout with status 0 when asked for (--help), else as an error
            if {'-h', '--help'} & set(argv):
                print(__doc__.strip())
                sys.exit()
            sys.exit(__doc__)
        path, device = opts.pop('ckpt'), opts.pop('device', devices.default_device())
        export, task, method = (opts.pop(k, '') for k in ('export_hf', 'task', 'method'))
        overrides = dict(parse_override(f'--{key}={text}', OVERRIDABLE, COMMAND_KEYS) for key, text in opts.items())
        check_ranges(EvalConfig(**overrides))  # before the checkpoint loads; the rest once its settings are known
        if device == 'cpu':
            devices.keep_freed_memory()
        if path.endswith('.pt') or os.path.isfile(path):
            if task or method:
                raise EvalError(f"--task and --method are for a Hugging Face model; {path} records its own")
            model, ckpt = load_checkpoint(path, device)
        else:
            model, ckpt = hf_checkpoint(path, task, method, device)
        if export:
            hf.export(model, export, ckpt, os.path.dirname(path) if os.path.isfile(path) else None)
            print(f"wrote {export}: {', '.join(sorted(os.listdir(export)))}")
            return
        cfg = eval_config(ckpt['config'], **overrides)
        check_eval_config(cfg)
        use_bf16 = devices.evaluation_dtype(torch.device(device).type) == 'bfloat16'
        ctx = torch.autocast('cuda', dtype=torch.bfloat16) if use_bf16 else nullcontext()
        result = evaluate(model, cfg, ckpt['step'], ckpt['tokens_seen'], device, ctx)
        print(json.dumps(result, indent=1))
    except (ConfigError, EvalError, data.DataError, scorers.ScorerError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    if result.get('errors'):
        sys.exit(f"error: {', '.join(result['errors'])} failed (the rest is in {cfg.out_dir}/eval.jsonl)")


def hf_checkpoint(path, task, method, device):
    """(model, what evaluate needs of a checkpoint) for a Hugging Face GPT-2, a directory or a hub name. The paper's
    released models bring their task and method (hf.RELEASED), and so does an export of ours (its config.json's
    "phf"); any other needs --task, and is evaluated as unconditional unless --method=cond. It keeps its own
    vocabulary (hf.from_pretrained with add_ids=False)."""
    known_task, known_method = hf.RELEASED.get(path, hf.exported_task_and_method(path))
    task, method = task or known_task, method or known_method or 'mle'
    if not task:
        raise EvalError(f"{path}: not one of the paper's released models; say which task it is for with "
                        f"--task={'|'.join(data.TASKS)} (and --method=cond if it is conditional)")
    if method not in data.METHODS:
        raise EvalError(f"--method={method}: choose one of {', '.join(data.METHODS)}")
    threshold = data.get_task(task).cond_threshold
    model = hf.from_pretrained(path, add_ids=False).to(device).eval()
    if data.METHODS[method].conditional and model.config.vocab_size <= data.MISALIGNED:
        raise EvalError(f"{path}: {model.config.vocab_size} token ids, no control tokens: it cannot be conditional")
    name = re.sub(r'[^\w.-]+', '_', os.path.basename(os.path.normpath(path)) if os.path.isdir(path) else path)
    config = dict(task=task, method=method, block_size=model.config.block_size, out_dir=os.path.join('out', name),
                  cond_threshold=threshold)
    return model, dict(config=config, step=0, tokens_seen=0)


if __name__ == '__main__':
    main()
