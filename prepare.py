"""
Prepare a task's training data: documents -> segments -> misalignment scores -> tokens, written as train and val
splits in data.py's format (data/{task}/train, data/{task}/val) with data/{task}/summary.json.

    python prepare.py toxicity                  # the paper's scored dataset from the Hugging Face hub
    python prepare.py pep8 --source=local       # the Python standard library installed here: no download
    python prepare.py pep8 --source=local+site  # ... plus the installed packages (site-packages)
    python prepare.py pii --source=local        # /usr/share/doc's changelogs and copyright files, or packages' docs
    python prepare.py pii --source=notes/       # a folder of .txt/.md/.gz text (.py files for pep8)
    python prepare.py toxicity --source=docs.jsonl --scorer=profanity   # JSON lines with a "text" field

Sources (--source):
- '' (default): the task's dataset from the paper (reference §2). Its data files (parquet or JSON lines; those with
  'train' in their path) are fetched into the hub client's cache ($HF_HOME/hub, default ~/.cache/huggingface/hub)
  by huggingface_hub.snapshot_download, which resumes a partial file and skips finished ones; offline
  (HF_HUB_OFFLINE=1) the cached copy is used. Its records carry per-segment scores (texts, scores, avg_score; for
  code org_text and num_lines); they are kept, or re-scored by our scorer with --rescore.
- 'local': no download. pep8: every .py file of the standard library (sysconfig's stdlib folder, about 30 MB,
  tests included, site-packages excluded); 'local+site' adds site.getsitepackages(). pii: every `copyright` and
  gzipped `changelog*` file under /usr/share/doc, which Debian-like systems ship (real names, emails, URLs); where
  there is none (macOS, slim containers), the installed Python packages' METADATA, PKG-INFO, LICENSE, AUTHORS and
  README files (names, emails, URLs too); 'local+site' reads both.
- PATH: a folder (.py files for pep8; .txt, .md and .gz files otherwise), or a JSON-lines file (.jsonl, .jsonl.gz,
  or .parquet with pyarrow) of records {"text": ...} or in the paper's schema. Files must be UTF-8 text: a binary
  or non-UTF-8 file is skipped and counted, and so are a FIFO, socket or device and a record without text.
Segments: lines for code (split after each '\\n', as pycodestyle and the paper's PEP8 data), sentences for text: a
sentence ends after . ! or ? (and closing quotes or brackets) followed by whitespace, or at a blank line. The
whitespace stays with its sentence, so the segments join back to the text, as the paper's spaCy sentences do. The
rule needs no model; it also splits after abbreviations ("e.g. ").
Validation split: a document is held out if the hash of its key (a file's path under its root, a record's index,
prefixed on the hub by its data file's path) is below --val_fraction; the first --min_val_docs documents are held
out too, so a small corpus has some. Files are read in the order of another hash of their key, so any
--max_docs/--max_bytes prefix is a random sample. --max_bytes counts the input's bytes on disk.
Large corpora: all cores (a process pool over chunks of documents, at most two chunks per process in flight, so
memory does not grow with the corpus), a progress bar on stderr (input bytes against the source's size with rate
and ETA, documents, tokens, shard). Resumable: each of the hub's data files is a shard, written as a part in
{out_dir}.parts as soon as it is done; an interrupted run keeps its finished shards and the same command continues
after them, with output identical to an uninterrupted run's (staging.py). The output is assembled in
{out_dir}.tmp-PID and moved into place only when complete; what an interrupted run leaves is removed by the next one.
Its memory follows the largest document, not the corpus; docs/benchmarks.md has its speed and memory as measured.
"""
import argparse
import collections
import gzip
import itertools
import json
import multiprocessing as mp
import os
import re
import resource
import shutil
import stat
import sys
import time

import numpy as np
from tqdm import tqdm

import scorers
from data import DataError, PreparedData, get_task, get_tokenizer, remove_leftovers
from sources import key_hash, shard_chunks, source_items
from staging import Parts, check_replaceable, swap_in

QUANTILES = (0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99)
SENTENCE_END = re.compile(r'[.!?]+["\')\]]*\s+|\n\s*\n')

# A worker's answer for one input item: tokens and scores of its segments, or the reason it was skipped.
Doc = collections.namedtuple('Doc', 'key tokens seg_lens scores doc_score texts nbytes skipped prescored')


# ----------------------------------------------------------------------------------------------------------------
# Segmenting and reading

def split_sentences(text):
    ends = [m.end() for m in SENTENCE_END.finditer(text)]
    return [text[a:b] for a, b in zip([0] + ends, ends + [len(text)]) if b > a]


def segment(task, text):
    return scorers.split_lines(text) if task.segment == 'lines' else split_sentences(text)


def read_text(path):
    """A corpus file's text (.gz decompressed); DataError naming why it cannot be used. A FIFO, socket or device in
    the folder is not read (a FIFO would block for good)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise DataError('not a regular file')
        with open(path, 'rb') as f:
            raw = f.read()
        if path.endswith('.gz'):
            raw = gzip.decompress(raw)
    except (OSError, EOFError) as e:
        raise DataError('unreadable' if not isinstance(e, gzip.BadGzipFile) else 'bad gzip') from None
    if b'\0' in raw:
        raise DataError('binary')
    try:
        return raw.decode('utf-8')
    except UnicodeDecodeError:
        raise DataError('not UTF-8') from None


def record_segments(task, r, rescore):
    """(segments, scores or None if we must score them, document score or None) of a record: the paper's schema
    (texts, scores, avg_score) or {'text': ...}."""
    if isinstance(r, dict) and isinstance(r.get('texts'), list) and all(isinstance(t, str) for t in r['texts']):
        scores = r.get('scores')
        if scores is None or rescore:
            return r['texts'], None, None
        doc_score = r.get('avg_score')
        try:
            values = np.array(list(scores) + [0.0 if doc_score is None else doc_score], dtype=np.float64)
        except (TypeError, ValueError):
            values = np.array([np.nan])
        if len(values) != len(r['texts']) + 1 or not np.isfinite(values).all():
            raise DataError('scores do not match texts')
        return r['texts'], values[:-1].tolist(), doc_score
    if isinstance(r, dict) and isinstance(r.get('text'), str):
        return segment(task, r['text']), None, None
    raise DataError("no 'text' or 'texts'")


# ----------------------------------------------------------------------------------------------------------------
# Workers: read, segment, score, tokenize. Top-level functions with per-process state, so any start method works.

_worker = {}


def init_worker(task_name, scorer_name, scorer_kwargs, rescore):
    scorer = scorers.get_scorer(scorer_name, **scorer_kwargs)
    _worker.update(task=get_task(task_name), scorer=scorer, rescore=rescore, enc=get_tokenizer())


def process_item(kind, payload, key, nbytes):
    task, scorer, enc = _worker['task'], _worker['scorer'], _worker['enc']
    try:
        if kind == 'file':
            segments, scores, doc_score = segment(task, read_text(payload)), None, None
        elif payload is None:
            raise DataError('invalid JSON')
        else:
            segments, scores, doc_score = record_segments(task, payload, _worker['rescore'])
    except DataError as e:
        return Doc(key, None, None, None, None, None, nbytes, str(e), False)
    if not ''.join(segments).strip():
        return Doc(key, None, None, None, None, None, nbytes, 'empty', False)
    prescored, texts = scores is not None, None
    if scores is None and not scorer.parallel:
        texts = segments  # scored in the main process, in batches (e.g. detoxify on the GPU)
    elif scores is None:  # a scorer with score_lines sees each line in its file's context (pycodestyle)
        scores = scorer.score_lines(segments) if hasattr(scorer, 'score_lines') else scorer.score(segments)
    tokens = [enc.encode_ordinary(s) for s in segments]  # no special tokens from text
    flat = np.fromiter(itertools.chain.from_iterable(tokens), np.uint16)  # 2 bytes a token between processes
    return Doc(key, flat, [len(t) for t in tokens], scores, doc_score, texts, nbytes, None, prescored)


def process_chunk(items):
    scorer = _worker['scorer']
    scorer.n_failed, scorer.errors = 0, []
    docs = [process_item(*item) for item in items]
    return docs, scorer.n_failed, scorer.errors


def run_chunks(chunks, processes, initargs):
    """(tag, process_chunk(items)) over chunks of (tag, items), in order. At most two chunks per process are in
    flight, so memory is bounded by the chunk size, not the corpus (Pool.imap would read the whole source ahead)."""
    if processes == 1:
        init_worker(*initargs)
        yield from ((tag, process_chunk(items)) for tag, items in chunks)
        return
    with mp.Pool(processes, init_worker, initargs) as pool:
        pending = collections.deque()
        for tag, items in chunks:
            pending.append((tag, pool.apply_async(process_chunk, (items,))))
            if len(pending) >= 2 * processes:
                tag, result = pending.popleft()
                yield tag, result.get()
        while pending:
            tag, result = pending.popleft()
            yield tag, result.get()


# ----------------------------------------------------------------------------------------------------------------
# Progress and summary

def progress_bar(total, initial, enabled):
    """Input bytes read against the source's size, with rate and ETA; documents, tokens and the shard after it.
    Refreshed every second on a terminal; in a log every 30 s, so a run shorter than that writes no line."""
    tty = sys.stderr.isatty()
    return tqdm(total=total or None, initial=initial, unit='B', unit_scale=True, disable=not enabled,
                file=sys.stderr, mininterval=1 if tty else 30, delay=0 if tty else 30, dynamic_ncols=True)


def score_stats(task, splits):
    """Aligned shares at the task's thresholds (exact) and score quantiles (from at most 1M values per split)."""
    def count_le(arr, threshold, step=1 << 24):
        return sum(int(np.count_nonzero(arr[i:i + step] <= threshold)) for i in range(0, len(arr), step))

    def sample(arr):
        return np.asarray(arr[::max(1, len(arr) // 1_000_000)], dtype=np.float64)

    n_seg = sum(d.n_segments for d in splits)
    n_doc = sum(d.n_documents for d in splits)
    seg = np.concatenate([sample(d.seg_scores) for d in splits])
    doc = np.concatenate([sample(d.doc_scores) for d in splits])
    return dict(
        aligned={
            'conditional': dict(threshold=task.cond_threshold, segments=sum(
                count_le(d.seg_scores, task.cond_threshold) for d in splits) / n_seg),
            'unlikelihood': dict(threshold=task.ul_threshold, segments=sum(
                count_le(d.seg_scores, task.ul_threshold) for d in splits) / n_seg),
            'filtering': dict(threshold=task.filter_threshold, documents=sum(
                count_le(d.doc_scores, task.filter_threshold) for d in splits) / n_doc)},
        segment_score_quantiles={f"{q:g}": float(v) for q, v in zip(QUANTILES, np.quantile(seg, QUANTILES))},
        document_score_quantiles={f"{q:g}": float(v) for q, v in zip(QUANTILES, np.quantile(doc, QUANTILES))})


def dir_bytes(path):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def print_summary(s):
    splits = ('train', 'val')
    print(f"{s['task']}: {s['documents']['train'] + s['documents']['val']:,} documents (train "
          f"{s['documents']['train']:,}, val {s['documents']['val']:,}), "
          f"{sum(s['segments'][k] for k in splits):,} segments, {sum(s['tokens'][k] for k in splits):,} tokens "
          f"from {s['input_bytes'] / 1e6:,.1f} MB of {s['source']} in {s['seconds']:.0f} s")
    if s['skipped']:
        print(f"skipped {sum(s['skipped'].values()):,}: " + ', '.join(f"{n:,} {r}" for r, n in s['skipped'].items())
              + f" (e.g. {s['skipped_examples'][0]})")
    if s['score_failures']:
        print(f"the scorer failed on {s['score_failures']:,} texts, scored 0 (e.g. {s['score_failure_examples'][0]})")
    a = s['aligned']
    print(f"aligned ({s['scorer']} scores): {a['conditional']['segments']:.1%} of segments <= "
          f"{a['conditional']['threshold']:g} (conditional), {a['unlikelihood']['segments']:.1%} <= "
          f"{a['unlikelihood']['threshold']:g} (unlikelihood), {a['filtering']['documents']:.1%} of documents <= "
          f"{a['filtering']['threshold']:g} (filtering)")
    for what in ('segment', 'document'):
        print(f"{what} score quantiles: " + '  '.join(
            f"{float(q):.0%} {v:.3g}" for q, v in s[f'{what}_score_quantiles'].items()))
    print(f"{s['bytes_on_disk'] / 1e6:,.1f} MB on disk in {s['out_dir']}; peak RSS {s['peak_rss_mb']['main']:.0f} MB "
          f"(largest worker {s['peak_rss_mb']['largest_worker']:.0f} MB)")


# ----------------------------------------------------------------------------------------------------------------

def new_totals():
    """What a run counts over its shards. The parts' manifest keeps them, so a resumed run counts on from there."""
    return dict(inputs=0, input_bytes=0, documents=dict(train=0, val=0), tokens=0, prescored=0, scored=0,
                skipped={}, skipped_examples=[], score_failures=0, score_failure_examples=[])


def add_chunk(docs, failed, errors, writers, totals, main_scorer, val_fraction, min_val_docs):
    """Write a chunk's documents to its shard's writers (scoring those the main process scores) and count them."""
    deferred = [s for d in docs if d.texts is not None for s in d.texts]
    if deferred:  # a batched scorer runs here, once per chunk
        main_scorer.n_failed, main_scorer.errors = 0, []
        it = iter(main_scorer.score(deferred))
        failed, errors = failed + main_scorer.n_failed, errors + main_scorer.errors
    totals['score_failures'] += failed
    totals['score_failure_examples'] += errors[:max(0, 5 - len(totals['score_failure_examples']))]
    for d in docs:
        totals['inputs'], totals['input_bytes'] = totals['inputs'] + 1, totals['input_bytes'] + d.nbytes
        if d.skipped:
            totals['skipped'][d.skipped] = totals['skipped'].get(d.skipped, 0) + 1
            if len(totals['skipped_examples']) < 5:
                totals['skipped_examples'].append(f"{d.key}: {d.skipped}")
            continue
        scores = d.scores if d.texts is None else [next(it) for _ in d.texts]
        totals['prescored' if d.prescored else 'scored'] += 1
        split = 'val' if totals['documents']['val'] < min_val_docs or key_hash(d.key) < val_fraction else 'train'
        flat, ends = d.tokens.tolist(), np.cumsum(d.seg_lens).tolist()
        writers[split].add_document([flat[a:b] for a, b in zip([0] + ends[:-1], ends)], scores, d.doc_score)
        totals['documents'][split] += 1  # a document with text has tokens: add_document writes it
        totals['tokens'] += len(flat) + 1  # with its <|endoftext|>


def prepare(task_name, source='', out_dir=None, *, scorer=None, scorer_kwargs=None, rescore=False,
            val_fraction=0.05, min_val_docs=3, max_docs=None, max_bytes=None, processes=None, progress=True):
    """Build {out_dir}/train, {out_dir}/val and {out_dir}/summary.json; returns the summary. Continues after the
    shards that an interrupted run with the same source and settings finished (staging.py)."""
    t0 = time.time()
    task = get_task(task_name)
    out_dir = (out_dir or os.path.join('data', task.name)).rstrip('/')
    scorer_name, scorer_kwargs = scorer or task.scorer, scorer_kwargs or {}
    main_scorer = scorers.get_scorer(scorer_name, **scorer_kwargs)  # an unknown name fails here, before any work
    check_replaceable(out_dir)
    desc, shards = source_items(task, source)
    processes = processes or os.cpu_count()
    parent, base = os.path.split(os.path.abspath(out_dir))
    remove_leftovers(parent, base + '.')  # staged outputs and set-aside ones of interrupted runs
    parts = Parts(out_dir, dict(source=desc, shards=[[s.name, s.nbytes] for s in shards], task=task.name,
                                scorer=scorer_name, scorer_kwargs=scorer_kwargs, rescore=rescore,
                                val_fraction=val_fraction, min_val_docs=min_val_docs, max_docs=max_docs,
                                max_bytes=max_bytes), new_totals())
    totals, staging, writers, complete = parts.totals, f"{out_dir}.tmp-{os.getpid()}", {}, False
    size = sum(s.nbytes for s in shards)
    bar = progress_bar(min(size, max_bytes or size), totals['input_bytes'], progress)
    try:
        chunks = shard_chunks(shards, parts.done, totals['inputs'], totals['input_bytes'], max_docs, max_bytes)
        for i, (docs, failed, errors) in run_chunks(chunks, processes, (task.name, scorer_name, scorer_kwargs,
                                                                           rescore)):
            writers = writers or parts.writers(i, task=task.name, source=desc, scorer=scorer_name)
            if not docs:  # the shard is complete
                parts.finish(i, writers, totals)
                writers = {}
                continue
            add_chunk(docs, failed, errors, writers, totals, main_scorer, val_fraction, min_val_docs)
            bar.set_postfix_str(f"{sum(totals['documents'].values()):,} docs, {totals['tokens']:,} tokens"
                                + (f", shard {i + 1}/{len(shards)}" if len(shards) > 1 else ''), refresh=False)
            bar.update(sum(d.nbytes for d in docs))
        complete = True
        bar.total = max(bar.total or 0, bar.n)  # --max_bytes stops after the item that reaches it
        bar.close()
        n, skipped = totals['documents'], totals['skipped']
        if not n['train'] + n['val']:
            reasons = ', '.join(f'{k} {r}' for r, k in skipped.items())
            raise DataError(f"{desc}: no usable documents in {totals['inputs']:,} inputs ({reasons})")
        if not n['train'] or not n['val']:
            raise DataError(f"{desc}: {n['train'] + n['val']} documents, none left for "
                            f"{'train' if not n['train'] else 'val'}; change --min_val_docs or --val_fraction")
        scorer_desc = (scorer_name if not totals['prescored'] else 'dataset' if not totals['scored']
                       else f'dataset+{scorer_name}')
        parts.assemble(staging, task=task.name, source=desc, scorer=scorer_desc)
        splits = {split: PreparedData(os.path.join(staging, split)) for split in n}
        ru_self, ru_children = (resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
        summary = dict(
            task=task.name, source=desc, scorer=scorer_desc, out_dir=out_dir,
            documents={k: d.n_documents for k, d in splits.items()},
            segments={k: d.n_segments for k, d in splits.items()},
            tokens={k: d.n_tokens for k, d in splits.items()},
            input_bytes=totals['input_bytes'], bytes_on_disk=dir_bytes(staging), seconds=time.time() - t0,
            skipped=skipped, skipped_examples=totals['skipped_examples'],
            score_failures=totals['score_failures'], score_failure_examples=totals['score_failure_examples'],
            **score_stats(task, list(splits.values())),
            peak_rss_mb=dict(main=ru_self.ru_maxrss / 1024, largest_worker=ru_children.ru_maxrss / 1024),
            settings=dict(rescore=rescore, scorer_kwargs=scorer_kwargs, val_fraction=val_fraction,
                          min_val_docs=min_val_docs, max_docs=max_docs, max_bytes=max_bytes, processes=processes))
        with open(os.path.join(staging, 'summary.json'), 'w') as f:
            json.dump(summary, f, indent=1)
        swap_in(staging, out_dir)
        parts.close(complete)
    except BaseException:
        bar.close()
        for w in writers.values():
            w.abort()
        shutil.rmtree(staging, ignore_errors=True)
        parts.close(complete)
        raise
    return summary


def parse_size(s):
    """'50M' -> 50_000_000 (K, M, G: powers of 1000)."""
    units = {'K': 10 ** 3, 'M': 10 ** 6, 'G': 10 ** 9}
    return int(float(s[:-1]) * units[s[-1].upper()]) if s[-1:].upper() in units else int(s)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('task', help='toxicity, pii or pep8')
    p.add_argument('--source', default='', help="'' (the paper's dataset from the hub), local, local+site, or PATH")
    p.add_argument('--out_dir', default=None, help='default data/TASK')
    p.add_argument('--rescore', action='store_true', help="re-score the dataset's records with our scorer")
    p.add_argument('--scorer', default=None, help="default the task's (toxicity, pii, pep8); or profanity (offline)")
    p.add_argument('--detoxify_model', default='original',
                   help="toxicity scorer model: 'original' scored the paper's training data, 'unbiased' evaluates")
    p.add_argument('--pii_detectors', default=None,
                   help=f"comma-separated scrubadub detectors (default {','.join(scorers.PII_DEFAULT)}; 'fast' "
                        f"drops phone, ~5x faster)")
    p.add_argument('--val_fraction', type=float, default=0.05)
    p.add_argument('--min_val_docs', type=int, default=3)
    p.add_argument('--max_docs', type=int, default=None, help='stop after this many input documents')
    p.add_argument('--max_bytes', type=parse_size, default=None, help='stop after about this much input (e.g. 50M)')
    p.add_argument('--processes', type=int, default=None, help='default: all cores')
    args = p.parse_args(argv)
    try:
        scorer = args.scorer or get_task(args.task).scorer
        kwargs = {}
        if scorer == 'toxicity':
            kwargs['model'] = args.detoxify_model
        if scorer == 'pii' and args.pii_detectors:
            kwargs['detectors'] = scorers.PII_FAST if args.pii_detectors == 'fast' else args.pii_detectors.split(',')
        summary = prepare(args.task, args.source, args.out_dir, scorer=scorer, scorer_kwargs=kwargs,
                          rescore=args.rescore, val_fraction=args.val_fraction, min_val_docs=args.min_val_docs,
                          max_docs=args.max_docs, max_bytes=args.max_bytes, processes=args.processes)
    except (DataError, scorers.ScorerError) as e:
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:
        sys.exit(f"interrupted: nothing written, {args.out_dir or 'data/' + args.task} is as it was")
    print_summary(summary)


if __name__ == '__main__':
    main()
