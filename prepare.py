"""
Prepare a task's training data: documents -> segments -> misalignment scores -> tokens, written as train and val
splits in data.py's format (data/{task}/train, data/{task}/val) with data/{task}/summary.json.

    python prepare.py toxicity                  # the paper's scored dataset from the Hugging Face hub
    python prepare.py pep8 --source=local       # the Python standard library installed here: no download
    python prepare.py pep8 --source=local+site  # ... plus the installed packages (site-packages)
    python prepare.py pii --source=local        # /usr/share/doc's changelogs and copyright files, or packages' docs
    python prepare.py pii --source=notes/       # a folder of .txt/.md/.gz text (.py files for pep8)
    python prepare.py toxicity --source=docs.jsonl --scorer=profanity   # JSON lines with a "text" field
    python prepare.py pii --source=fineweb/     # a folder of .parquet or .jsonl(.gz) files, each a shard
    python prepare.py toxicity --source=web/ --scorer=hf:org/classifier --score_output=unsafe   # any classifier
    torchrun --standalone --nproc_per_node=8 prepare.py toxicity --source=web/ --scorer=hf:org/classifier ...

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
- PATH: a data file (JSON lines: .jsonl, .jsonl.gz, .json, .json.gz; or .parquet) of records {"text": ...} (another
  field with --text_field) or in the paper's schema, or a folder of such files (a corpus as the hub serves one, e.g.
  FineWeb's parquet files), or a folder of text files (.py files for pep8; .txt, .md and .gz files otherwise), one
  document each; a folder with both kinds is refused. Files must be UTF-8 text: a binary or non-UTF-8 file is
  skipped and counted, and so are a FIFO, socket or device and a record without text.
Segments: lines for code (split after each '\\n', as pycodestyle and the paper's PEP8 data), sentences for text: a
sentence ends after . ! or ? (and closing quotes or brackets) followed by whitespace, or at a blank line. The
whitespace stays with its sentence, so the segments join back to the text, as the paper's spaCy sentences do. The
rule needs no model; it also splits after abbreviations ("e.g. ").
Validation split: a document is held out if the hash of its key (a file's path under its root, a record's index,
prefixed in a folder or on the hub by its data file's path) is below --val_fraction; the first --min_val_docs
documents are held out too, so a small corpus has some. Text files are read in the order of another hash of their
key, so any --max_docs/--max_bytes prefix is a random sample; data files in path order. --max_bytes counts the
input's bytes on disk.
Scorers (--scorer): the task's (detoxify, scrubadub, pycodestyle), profanity, or hf:NAME, any Hugging Face sequence
classifier (a folder or a hub name; scorers.ClassifierScorer, classifiers.py) with --score_output saying which output
is the misalignment score; a model runs on this rank's GPU, else on the CPU, in bfloat16 where the device has it
natively (a CPU with AMX or AVX512-BF16), else in float32, its texts cut at the model's maximum length (the summary
says both). A scorer whose scale is not the task's re-scores the dataset's records, and the summary prints the
thresholds train.py takes for it: its scores' quantiles at the shares of aligned segments and kept documents that the
paper's thresholds give on the paper's data (data.Task). The split's header records the scorer (scorers.describe),
and evaluation judges samples with it.
Large corpora: all cores (a process pool over chunks of documents, at most two chunks per process in flight, so
memory does not grow with the corpus), a progress bar on stderr (input bytes against the source's size with rate and
ETA, documents, tokens, shard). The source is planned as shards (sources.py): the hub's data files and a folder's (a
JSON-lines file larger than --shard_size in byte ranges), a folder's text files in runs of --shard_size. Each shard
is written as a part in {out_dir}.parts as soon as it is done; an interrupted run keeps its finished shards and the
same command continues after them (staging.py). Under torchrun (one or many nodes, a filesystem they share) each
rank scores its share of the shards, on its own GPU (LOCAL_RANK) or its share of the cores, and rank 0 assembles the
output: the bytes one process writes, whatever the number of ranks or where a run stopped (a batched model's scores
depend in their last bits on which texts share a batch, so keep --shard_size to get the same bytes again). The
output is assembled in {out_dir}.tmp-PID and moved into place only when complete; what an interrupted run leaves is
removed by the next one. Its memory follows the largest document, not the corpus; docs/benchmarks.md has its speed
and memory as measured, docs/scoring.md how to score a large corpus on many GPUs.
"""
import argparse
import collections
import gzip
import itertools
import json
import multiprocessing as mp
import os
import re
import shutil
import stat
import sys
import time
from dataclasses import dataclass
from typing import Optional

import numpy as np
from tqdm import tqdm

import scorers
from data import DataError, get_task, remove_leftovers, write_json
from sources import SHARD_BYTES, shard_chunks, source_items
from staging import Part, Parts, PartsKept, Ranks, assign, check_replaceable, swap_in
from summary import print_summary, summarize
from tokenizer import get_tokenizer

SENTENCE_END = re.compile(r'[.!?]+["\')\]]*\s+|\n\s*\n')

# A worker's answer for one input item: tokens and scores of its segments (or their texts, for the main process to
# score), or the reason it was skipped; the scorer's failures on its texts (each scored 0.0).
Doc = collections.namedtuple('Doc', 'tokens seg_lens scores doc_score texts nbytes skipped prescored n_failed errors')


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


def record_segments(task, r, rescore, text_field='text'):
    """(segments, scores or None if we must score them, document score or None) of a record: the paper's schema
    (texts, scores, avg_score) or {text_field: ...}."""
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
    if isinstance(r, dict) and isinstance(r.get(text_field), str):
        return segment(task, r[text_field]), None, None
    raise DataError(no_text(text_field))


def no_text(text_field):
    """Why a record is skipped that holds no text where record_segments looks."""
    return f"no {text_field!r} or 'texts'"


# ----------------------------------------------------------------------------------------------------------------
# Workers: read, segment, score, tokenize. Top-level functions with per-process state, so any start method works.

_worker = {}


def init_worker(task_name, scorer, rescore, text_field):
    _worker.update(task=get_task(task_name), scorer=scorers.get_scorer(scorer), rescore=rescore, text_field=text_field,
                   enc=get_tokenizer())


def process_item(kind, payload, key, nbytes):
    """The Doc of one input item (the key is not needed here: assembly derives it from the plan)."""
    task, scorer, enc = _worker['task'], _worker['scorer'], _worker['enc']
    try:
        if kind == 'file':
            segments, scores, doc_score = segment(task, read_text(payload)), None, None
        elif payload is None:
            raise DataError('invalid JSON')
        else:
            segments, scores, doc_score = record_segments(task, payload, _worker['rescore'], _worker['text_field'])
    except DataError as e:
        return Doc(None, None, None, None, None, nbytes, str(e), False, 0, [])
    if not ''.join(segments).strip():
        return Doc(None, None, None, None, None, nbytes, 'empty', False, 0, [])
    prescored, texts = scores is not None, None
    scorer.n_failed, scorer.errors = 0, []
    if scores is None and not scorer.parallel:
        texts = segments  # scored in the main process, in batches (e.g. a classifier on the GPU)
    elif scores is None:  # a scorer with score_lines sees each line in its file's context (pycodestyle)
        scores = scorer.score_lines(segments) if hasattr(scorer, 'score_lines') else scorer.score(segments)
    tokens = [enc.encode_ordinary(s) for s in segments]  # no special tokens from text
    flat = np.fromiter(itertools.chain.from_iterable(tokens), np.uint16)  # 2 bytes a token between processes
    return Doc(flat, [len(t) for t in tokens], scores, doc_score, texts, nbytes, None, prescored, scorer.n_failed,
               scorer.errors)


def process_chunk(items):
    return [process_item(*item) for item in items]


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


def write_chunk(docs, part, scorer):
    """Write a chunk's documents into its shard's part, after scoring in one call those the main process scores (a
    batched model); (documents, tokens) written."""
    owners = [k for k, d in enumerate(docs) if d.texts is not None for _ in d.texts]
    scores = iter(scorer.score([s for d in docs if d.texts is not None for s in d.texts]) if owners else [])
    failed = collections.defaultdict(list)
    for position, error in scorer.failed_at if owners else []:
        failed[owners[position]].append(error)
    n_docs = n_tokens = 0
    for k, d in enumerate(docs):
        if d.skipped:
            part.add_skipped(d.nbytes, d.skipped)
            continue
        doc_scores = d.scores if d.texts is None else [next(scores) for _ in d.texts]
        flat, ends = d.tokens.tolist(), np.cumsum(d.seg_lens).tolist()
        part.add_document(d.nbytes, [flat[a:b] for a, b in zip([0] + ends[:-1], ends)], doc_scores, d.doc_score,
                          prescored=d.prescored, n_failed=d.n_failed + len(failed[k]), errors=d.errors + failed[k])
        n_docs, n_tokens = n_docs + 1, n_tokens + len(flat) + 1  # with its <|endoftext|>
    return n_docs, n_tokens


def progress_bar(total, initial, enabled):
    """Input bytes read against the source's size, with rate and ETA; documents, tokens and the shard after it.
    Refreshed every second on a terminal; in a log every 30 s, so a run shorter than that writes no line."""
    tty = sys.stderr.isatty()
    return tqdm(total=total or None, initial=initial, unit='B', unit_scale=True, disable=not enabled,
                file=sys.stderr, mininterval=1 if tty else 30, delay=0 if tty else 30, dynamic_ncols=True)


def score_shards(shards, todo, parts, cfg):
    """Score this rank's shards (todo) into their parts, a progress bar on stderr. A shard that cannot be read or
    written stops the run with one line naming it; the finished shards stay."""
    chunks = shard_chunks(shards, todo, parts.counts, cfg.max_docs, cfg.max_bytes)
    size = sum(shards[i].nbytes for i in todo)
    bar = progress_bar(min(size, cfg.max_bytes or size), 0, cfg.progress)
    part, i, n_docs, n_tokens = None, None, 0, 0
    try:
        for i, docs in run_chunks(chunks, cfg.processes, (cfg.task, cfg.scorer_desc, cfg.rescore, cfg.text_field)):
            part = part or Part(parts.path(i), task=cfg.task, source=cfg.source, scorer=cfg.scorer_desc)
            if not docs:  # the shard is complete
                part.finish()
                part = None
                continue
            try:
                docs_tokens = write_chunk(docs, part, cfg.scorer)
            except scorers.ScorerError as e:  # a model that does not load or run
                raise scorers.ScorerError(f"shard {i + 1} of {len(shards)} ({shards[i].name}): {e}") from None
            n_docs, n_tokens = n_docs + docs_tokens[0], n_tokens + docs_tokens[1]
            bar.set_postfix_str(f"{n_docs:,} docs, {n_tokens:,} tokens"
                                + (f", shard {i + 1}/{len(shards)}" if len(shards) > 1 else ''), refresh=False)
            bar.update(sum(d.nbytes for d in docs))
        bar.total = max(bar.total or 0, bar.n)  # --max_bytes stops after the item that reaches it
    except BaseException as e:
        if part is not None:
            part.abort()
        if isinstance(e, OSError) and i is not None:  # a full disk, a lost mount: the finished shards are kept
            raise DataError(f"shard {i + 1} of {len(shards)} ({shards[i].name}): not written, {e.strerror or e}; "
                            f"the finished shards are kept: free space (or fix the cause) and run the same "
                            f"command") from None
        raise
    finally:
        bar.close()


# ----------------------------------------------------------------------------------------------------------------
# A run: plan, score this rank's shards, assemble

@dataclass
class Run:
    """What a run of prepare() works with, besides the plan: its settings, the scorer, and this rank's processes."""
    task: str
    source: str  # the source's description
    out_dir: str
    scorer_desc: str  # the scorer's description (scorers.describe), what the headers record
    scorer: scorers.Scorer  # the main process's: a batched model scores here
    rescore: bool
    text_field: str  # a record's text, where it is not in the paper's schema
    val_fraction: float
    min_val_docs: int
    max_docs: Optional[int]
    max_bytes: Optional[int]
    processes: int
    progress: bool  # a progress bar on stderr (rank 0's, under torchrun)


def prepare(task_name, source='', out_dir=None, *, scorer=None, scorer_kwargs=None, score_dtype='auto',
            rescore=False, text_field='text', val_fraction=0.05, min_val_docs=3, max_docs=None, max_bytes=None,
            shard_bytes=SHARD_BYTES, processes=None, progress=True):
    """Build {out_dir}/train, {out_dir}/val and {out_dir}/summary.json; returns the summary (None on the ranks but
    0 under torchrun). Continues after the shards that an interrupted run with the same source and settings finished
    (staging.py). A scorer on another scale than the task's re-scores the dataset's scored records. score_dtype: a
    model scorer's (auto: devices.default_dtype, bfloat16 where the device has it natively)."""
    t0 = time.time()
    task = get_task(task_name)
    out_dir = (out_dir or os.path.join('data', task.name)).rstrip('/')
    scorer_desc = scorers.describe(scorer or task.scorer, scorer_kwargs)
    main_scorer = scorers.get_scorer(scorer_desc, dtype=score_dtype)  # an unknown name fails here, before any work
    rescore = rescore or not scorers.on_scale_of(scorer_desc, task.scorer)
    check_replaceable(out_dir)
    ranks = Ranks()
    try:
        if ranks.rank > 0:  # rank 0 plans first: it fetches the hub's files into the cache the ranks share
            ranks.barrier()
        desc, shards = source_items(task, source, shard_bytes)
        if ranks.rank == 0:
            ranks.barrier()
        cfg = Run(task=task.name, source=desc, out_dir=out_dir, scorer_desc=scorer_desc, scorer=main_scorer,
                  rescore=rescore, text_field=text_field, val_fraction=val_fraction, min_val_docs=min_val_docs,
                  max_docs=max_docs, max_bytes=max_bytes, processes=processes or ranks.cores,
                  progress=progress and ranks.rank == 0)
        return prepare_shards(cfg, shards, ranks, t0)
    finally:
        ranks.close()


def prepare_shards(cfg, shards, ranks, t0):
    """Each rank scores its share of the unfinished shards into parts; then rank 0 assembles them."""
    settings = dict(source=cfg.source, shards=[[s.name, s.nbytes] for s in shards], task=cfg.task,
                    scorer=cfg.scorer_desc, score_dtype=cfg.scorer.precision(), rescore=cfg.rescore,
                    text_field=cfg.text_field, val_fraction=cfg.val_fraction, min_val_docs=cfg.min_val_docs,
                    max_docs=cfg.max_docs, max_bytes=cfg.max_bytes)
    ranks.check_same(json.dumps(settings))
    parts, scored = Parts(cfg.out_dir, settings), False
    if ranks.rank == 0:
        parent, base = os.path.split(os.path.abspath(cfg.out_dir))
        remove_leftovers(parent, base + '.')  # staged outputs and set-aside ones of interrupted runs
        parts.claim()
    ranks.barrier()
    done = parts.finished()
    ranks.barrier()  # every rank saw the same finished shards before any finishes another
    try:
        todo = assign(shards, set(range(len(shards))) - done, ranks.world)[ranks.rank]
        score_shards(shards, todo, parts, cfg)
        ranks.barrier()
        if ranks.rank > 0:
            return None
        scored = True
        summary = assemble(cfg, shards, parts, t0)
    except BaseException as e:
        if ranks.world == 1 or scored:  # else other ranks may still be writing parts
            parts.close(complete=scored and not isinstance(e, PartsKept))
        raise
    parts.close(complete=True)
    return summary


def assemble(cfg, shards, parts, t0):
    """Rank 0: the parts, under the rules that span shards, into the output, which replaces out_dir."""
    totals, splits = parts.select(shards, cfg.val_fraction, cfg.min_val_docs, cfg.max_docs, cfg.max_bytes)
    n, skipped = totals['documents'], totals['skipped']
    if not n['train'] + n['val']:
        reasons = ', '.join(f'{k} {r}' for r, k in skipped.items())
        hint = '; --text_field names the field that holds the text' if no_text(cfg.text_field) in skipped else ''
        raise DataError(f"{cfg.source}: no usable documents in {totals['inputs']:,} inputs ({reasons}){hint}")
    if not n['train'] or not n['val']:
        raise DataError(f"{cfg.source}: {n['train'] + n['val']} documents, none left for "
                        f"{'train' if not n['train'] else 'val'}; change --min_val_docs or --val_fraction")
    scorer_desc = (cfg.scorer_desc if not totals['prescored'] else 'dataset' if not totals['scored']
                   else f'dataset+{cfg.scorer_desc}')
    staging = f"{cfg.out_dir}.tmp-{os.getpid()}"
    try:
        parts.write(staging, splits, task=cfg.task, source=cfg.source, scorer=scorer_desc)
        summary = summarize(cfg, totals, staging, t0)
        write_json(os.path.join(staging, 'summary.json'), summary, indent=1)
        swap_in(staging, cfg.out_dir)
    except OSError as e:  # a full disk: the scored shards are worth keeping
        raise PartsKept(f"{staging}: not written, {e.strerror or e}; the finished shards are kept in {parts.dir}: "
                        f"free space (or fix the cause) and run the same command") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
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
    p.add_argument('--text_field', default='text',
                   help="a JSON-lines or parquet record's text, where it is not in the paper's schema (texts): e.g. "
                        "content (The Stack), raw_content (RedPajama)")
    p.add_argument('--scorer', default=None,
                   help="default the task's (toxicity, pii, pep8); or profanity (offline); or hf:NAME, a Hugging Face "
                        "sequence classifier (a folder or a hub name)")
    p.add_argument('--score_output', default='',
                   help="hf:NAME: which output is the misalignment score: a label (its probability; a regression "
                        "output as it is), by name or index; '-LABEL' negates it (higher = better, e.g. -0 for "
                        "FineWeb-Edu's educational score); default: the only output")
    p.add_argument('--score_dtype', default='auto', choices=('auto', 'float32', 'bfloat16'),
                   help="a model scorer's precision: auto is bfloat16 on a GPU and on a CPU with AMX or AVX512-BF16 "
                        "(3.6x float32 there, docs/benchmarks.md), else float32; float32 gives Detoxify.predict's "
                        "numbers")
    p.add_argument('--detoxify_model', default='original',
                   help="toxicity scorer model: 'original' scored the paper's training data, 'unbiased' evaluates")
    p.add_argument('--pii_detectors', default=None,
                   help=f"comma-separated scrubadub detectors (default {','.join(scorers.PII_DEFAULT)}; 'fast' "
                        f"drops phone, ~5x faster)")
    p.add_argument('--val_fraction', type=float, default=0.05)
    p.add_argument('--min_val_docs', type=int, default=3)
    p.add_argument('--max_docs', type=int, default=None, help='stop after this many input documents')
    p.add_argument('--max_bytes', type=parse_size, default=None, help='stop after about this much input (e.g. 50M)')
    p.add_argument('--shard_size', type=parse_size, default=SHARD_BYTES,
                   help="a folder's files, or a JSON-lines file, in shards of about this much (default 256M): what "
                        "a rank scores whole and a resumed run skips once finished")
    p.add_argument('--processes', type=int, default=None, help="default: all cores (under torchrun, the rank's share)")
    args = p.parse_args(argv)
    rank = f"rank {os.environ['RANK']}: " if int(os.environ.get('WORLD_SIZE', 1)) > 1 else ''
    try:
        scorer = args.scorer or get_task(args.task).scorer
        kwargs = {}
        if scorer == 'toxicity':
            kwargs['model'] = args.detoxify_model
        if scorer == 'pii' and args.pii_detectors:
            kwargs['detectors'] = scorers.PII_FAST if args.pii_detectors == 'fast' else args.pii_detectors.split(',')
        if args.score_output:
            if not scorer.startswith(scorers.HF):
                raise DataError(f"--score_output is for --scorer=hf:NAME, not {scorer}")
            kwargs['output'] = args.score_output
        summary = prepare(args.task, args.source, args.out_dir, scorer=scorer, scorer_kwargs=kwargs,
                          score_dtype=args.score_dtype, rescore=args.rescore, text_field=args.text_field,
                          val_fraction=args.val_fraction, min_val_docs=args.min_val_docs, max_docs=args.max_docs,
                          max_bytes=args.max_bytes, shard_bytes=args.shard_size, processes=args.processes)
    except (DataError, scorers.ScorerError) as e:
        sys.exit(f"error: {rank}{e}")
    except KeyboardInterrupt:
        sys.exit(f"interrupted: nothing written, {args.out_dir or 'data/' + args.task} is as it was")
    if summary:
        print_summary(summary)


if __name__ == '__main__':
    main()
