"""
Scoring benchmarks (bench.py --only=scoring): the classifier path against Detoxify.predict on one device, then what
prepare.py does to a document on one CPU core besides the model (sentences and GPT-2 tokens, pycodestyle, scrubadub).
One JSON line per measurement on stdout, as bench.py's rows.
"""
import os
import tempfile
import time

import numpy as np
import torch

import data
import devices
import sources
import staging
from bench import emit, sync
from tokenizer import get_tokenizer


def scoring_texts(n):
    """n sentences of this machine's local corpus (prepare.py pii --source=local's), repeated if it has fewer."""
    import prepare
    task, texts = prepare.get_task('pii'), []
    for path, _, _ in sources.corpus_files(task, sources.local_roots(task, 'local')):
        try:
            texts += [t for t in prepare.split_sentences(prepare.read_text(path)) if len(t.split()) >= 3]
        except data.DataError:
            continue
        if len(texts) >= n:
            break
    return (texts * (n // max(1, len(texts)) + 1))[:n]


def detoxify_format_model(folder, texts, small):
    """A random BERT-base (small: 2 x 64) classifier in detoxify's checkpoint format, its vocabulary the words of
    the texts (model_type: folder, which holds config and tokenizer); returns the checkpoint's path."""
    import collections
    import re

    import transformers
    words = collections.Counter(w for t in texts for w in re.findall(r'\w+|[^\w\s]', t.lower()))
    vocab = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]'] + [w for w, _ in words.most_common(30000)]
    with open(os.path.join(folder, 'vocab.txt'), 'w') as f:
        f.write('\n'.join(vocab) + '\n')
    size = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128) if small else \
        dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
    config = transformers.BertConfig(vocab_size=len(vocab), num_labels=6, **size)
    config.save_pretrained(folder)
    transformers.BertTokenizer(os.path.join(folder, 'vocab.txt'), model_max_length=512).save_pretrained(folder)
    torch.manual_seed(0)
    checkpoint = os.path.join(folder, 'model.ckpt')
    torch.save({'config': {'arch': {'args': {'model_type': folder, 'model_name': 'BertForSequenceClassification',
                                             'tokenizer_name': 'BertTokenizer', 'num_classes': 6}},
                           'dataset': {'args': {'classes': ['toxic'] + [f'c{i}' for i in range(5)]}}},
                'state_dict': transformers.BertForSequenceClassification(config).state_dict()}, checkpoint)
    return checkpoint


def bench_scoring(args):
    """Scoring speed in one process: our classifier path (scorers.ToxicityScorer; float32, and bfloat16 where the
    device has it) against Detoxify.predict, 64 texts a call, sorted by length (as prepare.py called it) and not, on
    the same model (detoxify_format_model) and texts (scoring_texts); then, on a CPU, bench_cpu_scorers. Under
    torchrun each rank measures its own GPU (LOCAL_RANK) while the others run (each timed pass starts together): N
    ranks against one."""
    import transformers
    from detoxify import Detoxify

    import scorers
    rank, cuda = int(os.environ.get('RANK', 0)), args.device.startswith('cuda')
    device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if cuda else 'cpu'
    if cuda:
        torch.cuda.set_device(device)
    ranks = staging.Ranks()  # prepare.py's: under torchrun a gloo group, and each rank its share of the cores
    n = 64 if args.small else 20000 if cuda else 256
    texts = scoring_texts(n)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = detoxify_format_model(tmp, texts, args.small)
        n_tokens = sum(map(len, transformers.AutoTokenizer.from_pretrained(tmp)(texts, truncation=True)['input_ids']))
        detoxify = Detoxify(checkpoint=checkpoint, device=device)

        def predict(batch, by_length):
            order = sorted(range(len(batch)), key=lambda i: len(batch[i])) if by_length else range(len(batch))
            out = [0.0] * len(batch)
            for i in range(0, len(batch), 64):
                for j, s in zip(order[i:i + 64], detoxify.predict([batch[j] for j in order[i:i + 64]])['toxicity']):
                    out[j] = s
            return out

        variants = {'detoxify_predict_sorted': lambda batch: predict(batch, True),
                    'detoxify_predict': lambda batch: predict(batch, False)}
        for dtype in ['float32'] + ['bfloat16'] * (not args.small and (cuda or devices.cpu_has_native_bf16())):
            scorer = scorers.ToxicityScorer(checkpoint=checkpoint, device=device, dtype=dtype)
            variants[f'classifier_{dtype}'] = scorer.score
        seconds, scores = {}, {}
        for name, run in variants.items():
            run(texts[:8])  # warm-up: loading, CUDA's start
            sync(device)
            ranks.barrier()
            t0 = time.perf_counter()
            scores[name] = run(texts)
            sync(device)
            seconds[name] = time.perf_counter() - t0
            emit(dict(bench='scoring', impl=name, rank=rank, device=device, segments=n, tokens=n_tokens,
                      seconds=round(seconds[name], 3), segments_per_s=round(n / seconds[name], 1),
                      tokens_per_s=round(n_tokens / seconds[name])))
        if not args.small:
            bench_budgets(scorer, texts, n_tokens, rank, device, ranks)
        t0 = time.perf_counter()
        scorer.load().tokenize(texts)  # the classifier's tokenizer alone: what feeds a GPU
        emit(dict(bench='scoring', impl='classifier_tokenizer', rank=rank, segments=n, tokens=n_tokens,
                  tokens_per_s=round(n_tokens / (time.perf_counter() - t0))))
    differences = {f'max_abs_difference_{dtype}': float(np.abs(np.subtract(
        scores[f'classifier_{dtype}'], scores['detoxify_predict'])).max())
        for dtype in ('float32', 'bfloat16') if f'classifier_{dtype}' in scores}
    emit(dict(bench='scoring', impl='ratio', rank=rank, **differences, **{
        f'{name}_vs_{base}': round(seconds[base] / seconds[name], 2) for name in seconds
        if name.startswith('classifier') for base in ('detoxify_predict_sorted', 'detoxify_predict')}))
    ranks.close()
    if not cuda:  # a GPU machine's image may lack scrubadub; the per-core figures are the CPU's
        bench_cpu_scorers(texts, args.small)


def bench_budgets(scorer, texts, n_tokens, rank, device, ranks):
    """The classifier path's tokens/s at other batch budgets (padded tokens a batch) than the device's default
    (scorers.TOKENS_PER_BATCH): a larger batch keeps a device busier but pads more, its texts' lengths further apart."""
    import scorers
    default = scorers.TOKENS_PER_BATCH[scorer.load().device.type]
    for budget in (default // 4, default // 2, default, default * 2, default * 4):
        scorer.tokens_per_batch = budget
        sync(device)
        ranks.barrier()
        t0 = time.perf_counter()
        scorer.score(texts)
        sync(device)
        emit(dict(bench='scoring', impl=f'classifier_{scorer.precision()}_budget', rank=rank, tokens_per_batch=budget,
                  default=budget == default, tokens_per_s=round(n_tokens / (time.perf_counter() - t0))))
    scorer.tokens_per_batch = None


def bench_cpu_scorers(texts, small):
    """MB/s on one core of what prepare.py does to a document besides scoring it (sentences, GPT-2 tokens), of
    pycodestyle (stdlib files, a file's lines at once, as prepare.py) and of scrubadub (a text at a time)."""
    import sysconfig

    import prepare
    import scorers
    enc, task = get_tokenizer(), prepare.get_task('pii')
    docs = [prepare.read_text(path) for path, _, _ in sources.corpus_files(task, sources.local_roots(task, 'local'))
            if path.endswith('copyright')][:20 if small else 400]
    t0 = time.perf_counter()
    segments = [s for d in docs for s in prepare.segment(task, d)]
    n_tokens = sum(len(enc.encode_ordinary(s)) for s in segments)
    dt, n_bytes = time.perf_counter() - t0, sum(len(d.encode()) for d in docs)
    emit(dict(bench='scoring', impl='segment_and_tokenize', cores=1, segments=len(segments), tokens=n_tokens,
              mb=round(n_bytes / 1e6, 2), mb_per_s=round(n_bytes / 1e6 / dt, 2), tokens_per_s=round(n_tokens / dt)))
    stdlib = sysconfig.get_paths()['stdlib']
    code = [open(os.path.join(stdlib, f), encoding='utf-8').read() for f in sorted(os.listdir(stdlib))
            if f.endswith('.py')][:4 if small else 40]
    for name, docs in (('pep8', code), ('pii', texts[:64 if small else 2000])):
        scorer = scorers.get_scorer(name)
        segments = [scorers.split_lines(d) for d in docs] if name == 'pep8' else [[t] for t in docs]
        scorer.score(['x = 1\n'])  # loads scrubadub's detectors
        t0 = time.perf_counter()
        for lines in segments:
            scorer.score_lines(lines) if name == 'pep8' else scorer.score(lines)
        dt = time.perf_counter() - t0
        n_bytes, n_segments = sum(len(''.join(lines).encode()) for lines in segments), sum(map(len, segments))
        emit(dict(bench='scoring', impl=name, cores=1, segments=n_segments, mb=round(n_bytes / 1e6, 2),
                  mb_per_s=round(n_bytes / 1e6 / dt, 3), segments_per_s=round(n_segments / dt, 1)))
