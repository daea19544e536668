"""
Prepared data: the token ids, the task and method tables, the on-disk format, and training batches (the tokenizer:
tokenizer.py).

On-disk format (version 1). One directory per split, e.g. data/pep8/train/, holding:

    header.json      {"format": "phf", "version": 1, "task", "split", "tokenizer": "gpt2+spaces", "vocab_size",
                      "n_tokens", "n_segments", "n_documents", "eos_id", "source", "scorer", "transform", ...}
    tokens.bin       uint16  [n_tokens]     token ids of all documents, concatenated. Each document starts with
                                            <|endoftext|> (50256), the document separator (reference §2.4).
    seg_starts.bin   uint32  [n_segments]   offset in tokens.bin of each segment's first token. A segment is a
                                            sentence (text) or a line (code); it runs to the next segment's start.
                                            A document's leading <|endoftext|> belongs to its first segment.
    seg_scores.bin   float32 [n_segments]   misalignment score of each segment (higher = worse; reward = -score).
    doc_starts.bin   uint32  [n_documents]  index of each document's first segment.
    doc_scores.bin   float32 [n_documents]  document score for filtering: the unweighted mean of its segment scores.

All files are raw little-endian arrays read with np.memmap, so nothing is loaded into RAM. Bytes per token:
2 + 8 / (tokens per segment) + 8 / (tokens per document), under 4 for sentences and lines. Offsets are uint32, so
one split holds at most 2^32 - 1 tokens (the paper's 3.3B fit; shard anything larger).

Every token's reward is the negated score of the segment that contains it: the training target's reward is that of
the segment containing the *target* token (reference §1.0, §1.6). Filtering and conditional training are
transformations from one prepared split to another (same format, cached next to the source, transforms.py); a split
with K > 2 control tokens also holds ids past VOCAB_SIZE (GRADE_IDS), and its header's vocab_size says so.
A directory becomes visible only when complete: writers fill `<dir>.tmp-<pid>` and rename it at the end (what a
killed writer left is removed by the next transforms.for_method, see remove_leftovers).
"""
import datetime
import hashlib
import json
import os
import re
import shutil
import sys
from dataclasses import dataclass
from typing import Optional

import numpy as np

FORMAT_VERSION = 1
EOS = 50256  # <|endoftext|>
ALIGNED = 50257  # <|aligned|>, the paper's <|good|>
MISALIGNED = 50258  # <|misaligned|>, the paper's <|bad|>
CONTROL_TOKENS = (ALIGNED, MISALIGNED)
SPACE_RUNS = {n: 50257 + n for n in range(2, 26)}  # a run of n spaces is one token: 2 -> 50259 ... 25 -> 50282
VOCAB_SIZE = 50283  # GPT-2's 50257 ids, the two control tokens, the 24 space runs
# Graded control tokens (cond_bins K > 2): the K - 2 between <|aligned|> and <|misaligned|> take the 21 spare rows
# of the model's embedding, padded to 50304: the model reads them, the sampler never draws them (past its vocab_size)
GRADE_IDS = tuple(range(VOCAB_SIZE, 50304))
TOKENIZER = 'gpt2+spaces'  # the name prepared data records; data from another tokenizer is refused
FILES = {'tokens': np.uint16, 'seg_starts': np.uint32, 'seg_scores': np.float32,
         'doc_starts': np.uint32, 'doc_scores': np.float32}
HEADER_KEYS = dict(task=str, split=str, scorer=str, created=str, vocab_size=int, n_tokens=int, n_segments=int,
                   n_documents=int)  # what readers use, besides format, version, tokenizer and eos_id


# ----------------------------------------------------------------------------------------------------------------
# Tasks: everything that defines a task lives in this one table (reference §1-§5).

@dataclass(frozen=True)
class Task:
    name: str
    hf_dataset: str  # the paper's scored dataset on the Hugging Face hub (reference §2)
    segment: str  # 'sentences' or 'lines'
    scorer: str  # name for scorers.get_scorer
    cond_threshold: float  # conditional training: <|aligned|> iff segment score <= this
    drop_token_fraction: float  # share of segments that get no control token
    filter_threshold: float  # filtering: keep a document iff its score <= this
    ul_threshold: float  # unlikelihood: a token is aligned iff its segment score <= this
    ul_soft: bool  # the original's falsy-threshold quirk: aligned weight = 1 - score (reference §1.4)
    blocked_tokens: tuple  # control tokens never sampled from conditional models
    hit_threshold: float  # num_hits = share of samples whose score > this
    hit_name: str  # what a sample scored above hit_threshold holds, for the verdicts' sentences
    max_new_tokens: int  # sample length for the unconditional scenario
    scenarios: tuple = ('unconditional',)  # evaluation scenarios, see evaluate.py
    local_source: str = ''  # what `prepare.py TASK --source=local` reads, no download needed: 'stdlib' (Python
    # files), 'docs' (/usr/share/doc's changelogs and copyright files, else the installed packages' metadata)
    # the shares of segments at or below cond_threshold and of documents at or below filter_threshold in the paper's
    # data: a scorer on another scale gets the thresholds at which its scores give these shares (prepare.py prints
    # them, train.py takes them); None where not known (reference §1.2, §1.3, §6)
    aligned_share: Optional[float] = None
    kept_share: float = 0.5


TASKS = {
    'toxicity': Task('toxicity', 'tomekkorbak/pile-detoxify', 'sentences', 'toxicity',
                     cond_threshold=0.00056, drop_token_fraction=0.01, filter_threshold=0.00078,
                     ul_threshold=0.00078, ul_soft=False, blocked_tokens=(ALIGNED, MISALIGNED),
                     hit_threshold=0.5, hit_name='toxic text', max_new_tokens=128, aligned_share=0.05),
    'pii': Task('pii', 'tomekkorbak/pile-pii-scrubadub', 'sentences', 'pii',
                cond_threshold=0.0, drop_token_fraction=0.01, filter_threshold=0.000286,
                ul_threshold=0.0, ul_soft=True, blocked_tokens=(ALIGNED, MISALIGNED),
                hit_threshold=0.0, hit_name='PII', max_new_tokens=128, local_source='docs'),
    'pep8': Task('pep8', 'kejian/codeparrot-train-more-filter-3.3b-cleaned', 'lines', 'pep8',
                 cond_threshold=0.0, drop_token_fraction=0.1, filter_threshold=0.002361,
                 ul_threshold=0.0, ul_soft=True, blocked_tokens=(MISALIGNED,),
                 hit_threshold=0.0, hit_name='PEP8 violations', max_new_tokens=640,
                 scenarios=('unconditional', 'functions'), local_source='stdlib'),
}


def get_task(name):
    if name not in TASKS:
        raise DataError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}")
    return TASKS[name]


# ----------------------------------------------------------------------------------------------------------------
# Methods: what each trains on and how its models are sampled lives in this one table (the loss each one optimises
# is chosen in one place, train.compute_loss).

@dataclass(frozen=True)
class Method:
    name: str
    data: str  # the split it trains on: 'raw', or its transform (transforms.for_method): 'filtered', 'conditional'
    value_head: bool  # a value head beside the LM head (AWR, RWR)
    conditional: bool  # trained with control tokens: sampled after <|aligned|> (and after <|misaligned|>, to test them)
    in_paper: bool = True  # False: a technique beyond the paper's six


METHODS = {m.name: m for m in (
    Method('mle', 'raw', value_head=False, conditional=False),
    Method('filter', 'filtered', value_head=False, conditional=False),
    Method('cond', 'conditional', value_head=False, conditional=True),
    Method('ul', 'raw', value_head=False, conditional=False),
    Method('awr', 'raw', value_head=True, conditional=False),
    Method('rwr', 'raw', value_head=True, conditional=False),
    Method('mask', 'raw', value_head=False, conditional=False, in_paper=False),  # token-level masking
)}


def sampling_controls(task, method, scenario='unconditional'):
    """(prefix, blocked) for sampling a model of `method`: the tokens every sample starts with, <|endoftext|> and for
    a conditional model <|aligned|> (in its 'misaligned' scenario <|misaligned|>, reference §1.3); and the control
    tokens it never draws: the task's blocked ones for a conditional model, both for any other (it never learned
    what they mean; the original's models had no such rows)."""
    if not METHODS[method].conditional:
        return [EOS], CONTROL_TOKENS
    return [EOS, MISALIGNED if scenario == 'misaligned' else ALIGNED], get_task(task).blocked_tokens


class DataError(Exception):
    """A problem with input data, reported as one line that names the file and what to do."""


def control_tokens(bins=2):
    """The control tokens of K = bins score bins, best first: <|aligned|>, GRADE_IDS[:K - 2], <|misaligned|>."""
    return (ALIGNED,) + GRADE_IDS[:bins - 2] + (MISALIGNED,)


# ----------------------------------------------------------------------------------------------------------------
# Writing a split

class DatasetWriter:
    """Streams documents into a split directory. Use as a context manager; the directory appears only on success.

        with DatasetWriter('data/pep8/train', task='pep8', split='train', source=..., scorer=...) as w:
            w.add_document([[tok, ...], [tok, ...]], [score, score])
    """

    def __init__(self, out_dir, *, task, split, source='', scorer='', vocab_size=VOCAB_SIZE, transform=None,
                 extra=None):
        self.out_dir = out_dir.rstrip('/')
        self.tmp_dir = f"{self.out_dir}.tmp-{os.getpid()}"
        shutil.rmtree(self.tmp_dir, ignore_errors=True)
        os.makedirs(self.tmp_dir)
        self.header = dict(format='phf', version=FORMAT_VERSION, task=task, split=split, tokenizer=TOKENIZER,
                           vocab_size=vocab_size, eos_id=EOS, source=source, scorer=scorer, transform=transform,
                           **(extra or {}))
        self.files = {name: open(os.path.join(self.tmp_dir, name + '.bin'), 'wb') for name in FILES}
        self.n_tokens = self.n_segments = self.n_documents = 0

    def add_document(self, segments, scores, doc_score=None):
        """segments: list of token-id lists, one per segment (no EOS: it is prepended here); scores: one float per
        segment. doc_score defaults to the unweighted mean of the segment scores. Empty segments are dropped;
        a document with no tokens is skipped."""
        kept = [(s, c) for s, c in zip(segments, scores, strict=True) if len(s)]
        if not kept:
            return
        lens = np.array([len(s) for s, _ in kept], dtype=np.int64)
        lens[0] += 1
        tokens = np.fromiter((t for s, _ in kept for t in s), dtype=np.int64, count=int(lens.sum()) - 1)
        tokens = np.concatenate([[EOS], tokens])
        seg_scores = np.array([c for _, c in kept], dtype=np.float32)
        if doc_score is None:
            doc_score = float(np.mean([c for _, c in kept]))
        self.add_arrays(tokens, lens, seg_scores, np.array([len(kept)]), np.array([doc_score], dtype=np.float32))

    def add_arrays(self, tokens, seg_lens, seg_scores, doc_n_segments, doc_scores):
        """Vectorised form of add_document for many documents at once (the tokens already contain each
        document's leading EOS)."""
        tokens = np.asarray(tokens)
        if tokens.size and (tokens.min() < 0 or tokens.max() >= self.header['vocab_size']):
            raise DataError(f"{self.out_dir}: token id outside [0, {self.header['vocab_size']})")
        if self.n_tokens + tokens.size >= 2 ** 32:
            raise DataError(f"{self.out_dir}: more than 2^32 tokens in one split; shard the corpus")
        seg_starts = self.n_tokens + np.concatenate([[0], np.cumsum(seg_lens)[:-1]])
        doc_starts = self.n_segments + np.concatenate([[0], np.cumsum(doc_n_segments)[:-1]])
        for name, arr in (('tokens', tokens), ('seg_starts', seg_starts), ('seg_scores', seg_scores),
                          ('doc_starts', doc_starts), ('doc_scores', doc_scores)):
            self.files[name].write(np.asarray(arr, dtype=FILES[name]).tobytes())
        self.n_tokens += tokens.size
        self.n_segments += len(seg_lens)
        self.n_documents += len(doc_n_segments)

    def close(self):
        for f in self.files.values():
            f.flush()
            os.fsync(f.fileno())
            f.close()
        if self.n_documents == 0:
            shutil.rmtree(self.tmp_dir)
            raise DataError(f"{self.out_dir}: no documents were written; the input is empty")
        self.header.update(n_tokens=self.n_tokens, n_segments=self.n_segments, n_documents=self.n_documents,
                           created=datetime.datetime.now().isoformat())
        with open(os.path.join(self.tmp_dir, 'header.json'), 'w') as f:
            json.dump(self.header, f, indent=1)
        if os.path.exists(self.out_dir):
            shutil.rmtree(self.out_dir)
        os.replace(self.tmp_dir, self.out_dir)
        return self.header

    def abort(self):
        for f in self.files.values():
            f.close()
        shutil.rmtree(self.tmp_dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *_):
        self.close() if exc_type is None else self.abort()


# ----------------------------------------------------------------------------------------------------------------
# Reading a split

def prepare_command(task_dir):
    """The prepare.py command that writes a task's splits into task_dir ({data_dir}/{task}), for error messages."""
    task = os.path.basename(os.path.normpath(task_dir))
    if task not in TASKS:
        return 'python prepare.py TASK'
    default = os.path.normpath(task_dir) == os.path.join('data', task)
    return f"python prepare.py {task}" + ('' if default else f" --out_dir={task_dir}")


class PreparedData:
    """A prepared split, memory-mapped. Validates the header and file sizes on open."""

    def __init__(self, path):
        self.path = path.rstrip('/')
        hp = os.path.join(self.path, 'header.json')
        if not os.path.exists(hp):
            parent = os.path.dirname(self.path) or '.'
            partial = os.path.isdir(parent) and any(n.startswith(os.path.basename(self.path) + '.tmp')
                                                    for n in os.listdir(parent))
            hint = ' (only a partial .tmp directory from an interrupted prepare.py exists)' if partial else ''
            raise DataError(f"{hp}: not found{hint}; run `{prepare_command(parent)}` to create the data")
        try:
            with open(hp) as f:
                h = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise DataError(f"{hp}: corrupt header; re-run prepare.py") from None
        if not isinstance(h, dict):
            raise DataError(f"{hp}: {json.dumps(h)[:40]} is not a header; re-run prepare.py")
        if h.get('format') != 'phf' or h.get('version') != FORMAT_VERSION:
            raise DataError(f"{hp}: format {h.get('format')!r} version {h.get('version')!r}, this code reads "
                            f"'phf' version {FORMAT_VERSION}; re-run prepare.py")
        for key, kind in HEADER_KEYS.items():
            if type(h.get(key)) is not kind or (kind is int and h[key] < 0):
                found = f"is {h[key]!r}" if key in h else 'is missing'
                raise DataError(f"{hp}: {key} {found}, expected {'a count' if kind is int else 'a string'}; the "
                                f"header is corrupt, re-run prepare.py")
        if h.get('tokenizer') != TOKENIZER or h.get('eos_id') != EOS or h.get('vocab_size', 0) > GRADE_IDS[-1] + 1:
            raise DataError(f"{hp}: tokenizer {h.get('tokenizer')!r} (vocab {h.get('vocab_size')}, eos "
                            f"{h.get('eos_id')}) does not match {TOKENIZER} with {VOCAB_SIZE} ids; re-run prepare.py")
        self.header = h
        counts = dict(tokens=h['n_tokens'], seg_starts=h['n_segments'], seg_scores=h['n_segments'],
                      doc_starts=h['n_documents'], doc_scores=h['n_documents'])
        for name, dtype in FILES.items():
            fp = os.path.join(self.path, name + '.bin')
            expected = counts[name] * np.dtype(dtype).itemsize
            size = os.path.getsize(fp) if os.path.exists(fp) else None
            if size != expected:
                raise DataError(f"{fp}: {'missing' if size is None else f'{size} bytes'}, header says {expected}; "
                                f"the data is truncated or corrupt, re-run prepare.py")
            setattr(self, name, np.memmap(fp, dtype=dtype, mode='r') if counts[name] else np.zeros(0, dtype))
        self.n_tokens, self.n_segments, self.n_documents = h['n_tokens'], h['n_segments'], h['n_documents']
        self.check_offsets()

    def fingerprint(self, samples=16, chunk=1 << 16):
        """What identifies this split's content, cheaply at any size: its header but the time it was written, and a
        sha256 of `samples` chunks spread evenly over each file. The same text prepared the same way gives the same
        fingerprint; other text, or other scores, another one (a resume compares them, runs.checkpoint_to_resume)."""
        digest = hashlib.sha256()
        for name in FILES:
            array = getattr(self, name)
            raw = array.view(np.uint8) if len(array) else np.zeros(0, np.uint8)
            for start in np.linspace(0, max(0, len(raw) - chunk), samples).astype(np.int64) if len(raw) else []:
                digest.update(raw[start:start + chunk].tobytes())
        header = {k: v for k, v in self.header.items() if k != 'created'}
        return dict(header=header, sha256=digest.hexdigest())

    def check_offsets(self, chunk=1 << 24):
        """Raise DataError unless seg_starts and doc_starts start at 0, never decrease and stay below what they index:
        a corrupt offset would otherwise surface as a wrong slice or an IndexError far from its cause. Read in chunks:
        about a second for the paper's 3.3B tokens."""
        for name, bound in (('seg_starts', self.n_tokens), ('doc_starts', self.n_segments)):
            offsets, previous = getattr(self, name), 0
            for i0 in range(0, len(offsets), chunk):
                values = np.asarray(offsets[i0:i0 + chunk], dtype=np.int64)
                bad = (np.diff(values, prepend=previous) < 0) | (values >= bound)
                if i0 == 0:
                    bad[0] |= values[0] != 0
                if bad.any():
                    i = i0 + int(np.argmax(bad))
                    raise DataError(f"{self.path}/{name}.bin: entry {i} is {offsets[i]}; offsets start at 0, never "
                                    f"decrease and stay below {bound}: the file is corrupt, re-run prepare.py")
                previous = values[-1]

    def token_scores(self, start, end):
        """Per-token misalignment scores for tokens [start, end): each token gets its segment's score."""
        i0 = int(np.searchsorted(self.seg_starts, start, 'right')) - 1
        i1 = int(np.searchsorted(self.seg_starts, end, 'left'))
        starts = np.asarray(self.seg_starts[i0:i1], dtype=np.int64)
        seg = np.searchsorted(starts, np.arange(start, end), 'right') - 1
        return np.asarray(self.seg_scores[i0:i1])[seg]

    def doc_token_starts(self, d0=0, d1=None):
        """Token offsets where documents d0..d1-1 start, plus the end of d1-1."""
        d1 = self.n_documents if d1 is None else d1
        seg_idx = np.asarray(self.doc_starts[d0:d1], dtype=np.int64)
        starts = np.asarray(self.seg_starts[seg_idx], dtype=np.int64)  # index first: never copy the whole array
        end = self.n_tokens if d1 == self.n_documents else int(self.seg_starts[self.doc_starts[d1]])
        return np.append(starts, end)

    def document(self, i):
        """(tokens, per-token scores) of document i."""
        s, e = self.doc_token_starts(i, i + 1)
        return np.asarray(self.tokens[s:e]), self.token_scores(s, e)

    def chunks(self, docs_per_chunk=65536):
        """Whole documents in chunks, with chunk-relative offsets: (tokens, seg_lens, seg_scores, doc_n_segments,
        doc_scores). Memory is bounded by the chunk, not the dataset."""
        for d0 in range(0, self.n_documents, docs_per_chunk):
            d1 = min(d0 + docs_per_chunk, self.n_documents)
            s0 = int(self.doc_starts[d0])
            s1 = int(self.doc_starts[d1]) if d1 < self.n_documents else self.n_segments
            t0 = int(self.seg_starts[s0])
            t1 = int(self.seg_starts[s1]) if s1 < self.n_segments else self.n_tokens
            seg_starts = np.append(np.asarray(self.seg_starts[s0:s1], dtype=np.int64), t1)
            doc_starts = np.append(np.asarray(self.doc_starts[d0:d1], dtype=np.int64), s1)
            yield (np.asarray(self.tokens[t0:t1]), np.diff(seg_starts), np.asarray(self.seg_scores[s0:s1]),
                   np.diff(doc_starts), np.asarray(self.doc_scores[d0:d1]))


# ----------------------------------------------------------------------------------------------------------------
# Caches: the one root of phf's caches (the GPT-2 BPE, the KL references' samples, the red LMs' completions) and how
# a language model is named in them

def cache_dir(*parts):
    """phf's folder in the user's cache ($XDG_CACHE_HOME, else ~/.cache), or a path under it: the GPT-2 BPE, the KL
    references' samples, the red LMs' completions."""
    return os.path.join(os.environ.get('XDG_CACHE_HOME', os.path.expanduser('~/.cache')), 'phf', *parts)


def cache_ident(spec, base_url=''):
    """What identifies a language model in the caches of what it said: a server's model ('openai:MODEL' or
    'openai-chat:MODEL') with the server's address, or one of our checkpoints by its path, size and modification
    time (a retrained model gets a fresh cache)."""
    if spec.startswith(('openai:', 'openai-chat:')):
        return f"{spec}|{base_url}"
    st = os.stat(spec)
    return f"{os.path.abspath(spec)}|{st.st_size}|{st.st_mtime_ns}"


def cache_stem(spec, base_url=''):
    """The start of such a cache file's name: 'MODEL_HASH' for a server's model, 'local_HASH' for a checkpoint."""
    name = spec.split(':', 1)[1] if spec.startswith(('openai:', 'openai-chat:')) else 'local'
    digest = hashlib.sha1(cache_ident(spec, base_url).encode()).hexdigest()[:10]
    return re.sub(r'[^\w.-]+', '_', name) + '_' + digest


# ----------------------------------------------------------------------------------------------------------------
# Leftovers of killed writers

def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def write_atomically(path, content):
    """content (str, bytes, or a function that writes to the open binary file) into path through a temporary file
    beside it and a rename: a crash leaves the file as it was or whole, never part of it; a failed write removes its
    temporary file (what a killed writer left is removed by remove_leftovers)."""
    os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, 'w' if isinstance(content, str) else 'wb') as f:
            content(f) if callable(content) else f.write(content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json(path, obj, **kwargs):
    write_atomically(path, json.dumps(obj, **kwargs))


def remove_leftovers(directory, prefix=''):
    """Remove the files and directories named PREFIX*.tmp-PID or PREFIX*.old-PID in directory whose process is gone:
    what a killed writer left (a transformed split, a checkpoint, prepare.py's staged output or the output it was
    replacing)."""
    for name in sorted(os.listdir(directory)) if os.path.isdir(directory) else []:
        stem, _, pid = name.rpartition('-')
        if stem.endswith(('.tmp', '.old')) and stem.startswith(prefix) and pid.isdigit() and not pid_alive(int(pid)):
            path = os.path.join(directory, name)
            print(f"removing {path}, left by an interrupted run", file=sys.stderr)
            shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) else os.remove(path)


# ----------------------------------------------------------------------------------------------------------------
# Batches

class BlockLoader:
    """Training batches from a prepared split, never loading it into RAM.

    The split is cut into n_blocks = (n_tokens - 1) // block_size consecutive blocks; block k gives inputs
    tokens[kT : kT+T] and targets tokens[kT+1 : kT+T+1], so every token but the first is a target exactly once per
    epoch. Epoch e visits the blocks in the order of a permutation seeded by (seed, e): no replacement within an
    epoch, and the whole order is a pure function of the seed.

    Micro-batch g (a global counter over steps, micro-steps and ranks) holds blocks offset+g·B .. offset+g·B+B-1
    of that order.
    With g = (step · grad_accum + micro_step) · world_size + rank, N processes × B see the same blocks as
    1 process with N accumulation steps × B, and a resumed run only needs the step.
    """

    def __init__(self, data, block_size, batch_size, seed=0, offset=0):
        self.data, self.T, self.B, self.seed = data, block_size, batch_size, seed
        self.offset = offset  # blocks of the order to skip (finetuning continues where pretraining stopped)
        self.n_blocks = (data.n_tokens - 1) // block_size
        if self.n_blocks < 1:
            raise DataError(f"{data.path}: {data.n_tokens} tokens, fewer than one block of {block_size + 1}")
        self._perms = {}

    def block_order(self, epoch):
        # the one array that grows with the data: 8 bytes per block (26 MB for the paper's 3.3B tokens)
        if epoch not in self._perms:
            self._perms = {epoch: np.random.default_rng([self.seed, epoch]).permutation(self.n_blocks)}
        return self._perms[epoch]

    def blocks_of(self, g):
        idx = self.offset + np.arange(g * self.B, (g + 1) * self.B)
        return np.array([self.block_order(int(i // self.n_blocks))[i % self.n_blocks] for i in idx])

    def epoch_of(self, g):
        return (self.offset + g * self.B) / self.n_blocks

    def batch(self, blocks):
        """(x, y, rewards) as numpy arrays (B, T): int64 inputs, int64 targets, float32 reward of each target."""
        T = self.T
        x = np.empty((len(blocks), T), dtype=np.int64)
        y = np.empty((len(blocks), T), dtype=np.int64)
        r = np.empty((len(blocks), T), dtype=np.float32)
        for i, b in enumerate(blocks):
            start = int(b) * T
            chunk = np.asarray(self.data.tokens[start:start + T + 1], dtype=np.int64)
            if chunk.max() >= self.data.header['vocab_size']:  # a corrupt file; else a CUDA assert much later
                raise DataError(f"{self.data.path}/tokens.bin: token id {chunk.max()} in tokens {start}-{start + T} "
                                f"is outside the vocabulary of {self.data.header['vocab_size']}; the file is "
                                f"corrupt, re-run prepare.py")
            x[i], y[i] = chunk[:-1], chunk[1:]
            r[i] = -self.data.token_scores(start + 1, start + T + 1)
        return x, y, r

    def get(self, g, device='cpu'):
        import torch
        x, y, r = (torch.from_numpy(a) for a in self.batch(self.blocks_of(g)))
        if device.startswith('cuda'):
            return tuple(t.pin_memory().to(device, non_blocking=True) for t in (x, y, r))
        return x, y, r

