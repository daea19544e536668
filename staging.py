"""
prepare.py's output directory, built shard by shard by one process or by every rank of a torchrun job, so that an
interrupted run continues where it stopped and N ranks write the bytes one process writes.

Parts. Each shard of the plan (sources.py) becomes a part, {out_dir}.parts/NNNNN/: docs/ (its documents in data.py's
format, in the order of its items) and items.json (what each item became: its bytes; a document scored here, one
with the dataset's scores, or skipped and why; the texts the scorer failed on). A part is written in NNNNN.tmp-PID
and renamed when complete, items.json inside: a part with items.json is a finished shard, which a run with the same
settings (manifest.json: source, shards, scorer, ...) does not score again.

Assembly (rank 0, once every shard is finished) applies the rules that span shards, over the items of all parts in
shard order, as one reader of the whole source would: --max_docs and --max_bytes cut the input, the first
--min_val_docs documents and those whose key hashes below --val_fraction go to val. The documents are copied into
{out_dir}.tmp-PID/{train,val}, which then replaces out_dir as a whole. So the output depends on the source, the
settings and the shard order, never on the number of ranks or on where a run stopped.

Ranks (torchrun's RANK, WORLD_SIZE, LOCAL_WORLD_SIZE; one process without them): each plans the same shards
(checked), takes its share of the unfinished ones (the largest first, each to the rank with the fewest bytes so far)
and scores them; the ranks wait for one another in barriers of a gloo group, and rank 0 assembles.
"""
import datetime
import hashlib
import json
import os
import shutil
import socket
import sys

import numpy as np

from data import DataError, DatasetWriter, PreparedData, pid_alive, write_json
from sources import key_hash

SPLITS = ('train', 'val')
PAST_LIMITS = 2  # a document's split at assembly, beside 0 (train) and 1 (val): after --max_docs or --max_bytes


class PartsKept(DataError):
    """An error after which the finished shards are worth keeping (a full disk at assembly)."""


def check_replaceable(out_dir):
    """out_dir is replaced as a whole: refuse one that holds anything but a previous prepare.py output."""
    if os.path.isdir(out_dir):
        foreign = [n for n in sorted(os.listdir(out_dir))
                   if n != 'summary.json' and n.partition('.')[0] not in SPLITS]
        if foreign:
            raise DataError(f"{out_dir}: holds {foreign[0]!r}, not prepare.py output; choose another --out_dir")
    elif os.path.exists(out_dir):
        raise DataError(f"{out_dir}: not a directory")


def swap_in(staging, out_dir):
    old = f"{out_dir}.old-{os.getpid()}"
    if os.path.exists(out_dir):
        os.replace(out_dir, old)
    os.replace(staging, out_dir)
    shutil.rmtree(old, ignore_errors=True)


class Ranks:
    """This process's rank of world ranks, local_world of them on this machine, and the barriers between them: a
    gloo group, on GPUs too (it only waits; scoring takes hours, hence the long timeout)."""

    def __init__(self):
        self.rank, self.world = int(os.environ.get('RANK', 0)), int(os.environ.get('WORLD_SIZE', 1))
        self.local_world = int(os.environ.get('LOCAL_WORLD_SIZE', 1))
        cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
        self.cores = max(1, cores // self.local_world)  # this rank's share of the machine's cores
        if self.world > 1:
            import torch

            import devices
            devices.init_process_group('gloo', timeout=datetime.timedelta(days=7))
            torch.set_num_threads(self.cores)  # a model scorer on the CPU (torchrun sets 1 thread a process)

    def barrier(self):
        """Wait for every rank. Where one stopped, it said why in one line and torchrun stops the others: this one
        leaves quietly."""
        if self.world > 1:
            import torch.distributed as dist
            try:
                dist.barrier()
            except RuntimeError:
                raise SystemExit(1) from None

    def check_same(self, plan):
        """Stop the job if a rank's plan differs from rank 0's (the source is not on a filesystem all nodes share, or
        changed while they listed it; a model scorer would run in another dtype); the lowest such rank says so."""
        if self.world == 1:
            return
        import torch
        import torch.distributed as dist
        digest = torch.tensor(list(hashlib.sha256(plan.encode()).digest()), dtype=torch.int64)
        gathered = [torch.empty_like(digest) for _ in range(self.world)]
        dist.all_gather(gathered, digest)
        differ = [r for r, d in enumerate(gathered) if not torch.equal(d, gathered[0])]
        if differ and self.rank == differ[0]:
            raise DataError("the source's shards or the scorer's dtype differ from rank 0's; every rank must see the "
                            "same files (a filesystem all nodes share) and run the scorer in one dtype (--score_dtype)")
        if differ:
            raise SystemExit(1)

    def close(self):
        if self.world > 1:
            import torch.distributed as dist
            dist.destroy_process_group()


def assign(shards, todo, world):
    """{rank: [shard index, ...] in order}: the shards in todo, the largest first, each to the rank with the fewest
    bytes so far (the lowest such rank)."""
    load, mine = [0] * world, {r: [] for r in range(world)}
    for i in sorted(todo, key=lambda i: (-shards[i].nbytes, i)):
        r = min(range(world), key=lambda r: (load[r], r))
        load[r] += shards[i].nbytes
        mine[r].append(i)
    return {r: sorted(s) for r, s in mine.items()}


class Part:
    """One shard's part while it is written: its documents and what each item became, in PATH.tmp-PID."""

    def __init__(self, path, **header):
        self.path, self.tmp = path, f"{path}.tmp-{os.getpid()}"
        shutil.rmtree(self.tmp, ignore_errors=True)
        os.makedirs(self.tmp)
        self.writer = DatasetWriter(os.path.join(self.tmp, 'docs'), split='shard', **header)
        self.nbytes, self.kinds, self.skipped, self.failures = [], [], [], []

    def add_document(self, nbytes, segments, scores, doc_score, *, prescored, n_failed=0, errors=()):
        """segments: token lists; n_failed: the texts the scorer failed on (scored 0.0), errors: what it said."""
        if not any(len(s) for s in segments):  # no tokens: the writer would leave it out, so it is skipped here
            return self.add_skipped(nbytes, 'empty')
        if n_failed:
            self.failures.append([len(self.kinds), n_failed, list(errors[:5])])
        self.nbytes.append(nbytes)
        self.kinds.append('p' if prescored else 's')
        self.writer.add_document(segments, scores, doc_score)

    def add_skipped(self, nbytes, reason):
        self.skipped.append([len(self.kinds), reason])
        self.nbytes.append(nbytes)
        self.kinds.append('x')

    def finish(self):
        """Close the part and move it into place: the shard is finished."""
        self.writer.close() if self.writer.n_documents else self.writer.abort()
        write_json(os.path.join(self.tmp, 'items.json'), dict(nbytes=self.nbytes, kinds=''.join(self.kinds),
                                                              skipped=self.skipped, failures=self.failures))
        os.replace(self.tmp, self.path)

    def abort(self):
        self.writer.abort()
        shutil.rmtree(self.tmp, ignore_errors=True)


def new_totals():
    """What a run counts over the input it takes."""
    return dict(inputs=0, input_bytes=0, documents=dict(train=0, val=0), prescored=0, scored=0, skipped={},
                skipped_examples=[], score_failures=0, score_failure_examples=[])


class Parts:
    """The parts of a run in {out_dir}.parts, their manifest, and their assembly."""

    def __init__(self, out_dir, settings):
        self.dir = f"{out_dir}.parts"
        self.manifest = os.path.join(self.dir, 'manifest.json')
        self.settings = json.loads(json.dumps(settings))  # as the manifest holds them (tuples become lists)
        self.n_shards = len(self.settings['shards'])
        self.known = {}  # (items, bytes) of finished shards

    def path(self, i):
        return os.path.join(self.dir, f"{i:05d}")

    def finished(self):
        return {i for i in range(self.n_shards) if os.path.isfile(os.path.join(self.path(i), 'items.json'))}

    def read(self):
        try:
            with open(self.manifest) as f:
                found = json.load(f)
            return found if {'settings', 'pid'} <= set(found) else None
        except (OSError, ValueError, TypeError):  # none, or not ours: start again
            return None

    def claim(self):
        """Rank 0, before any rank writes: keep the finished parts of an interrupted run with the same settings and
        remove anything else; refuse parts that a live run on this machine is writing."""
        found = self.read()
        if found:
            if (found['pid'] != os.getpid() and found.get('host', socket.gethostname()) == socket.gethostname()
                    and pid_alive(found['pid'])):
                raise DataError(f"{self.dir}: prepare.py pid {found['pid']} is writing it; wait for it or stop it")
            if found['settings'] != self.settings:
                print(f"{self.dir}: made from another source or with other settings; starting again", file=sys.stderr)
                found = None
        if found is None:
            shutil.rmtree(self.dir, ignore_errors=True)
            os.makedirs(self.dir)
        done = self.finished()
        for name in os.listdir(self.dir):  # what a killed run wrote of unfinished shards
            if name != 'manifest.json' and not (name.isdigit() and int(name) in done):
                path = os.path.join(self.dir, name)
                shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
        if done:
            print(f"resuming: {len(done)} of {self.n_shards} shards already prepared in {self.dir}", file=sys.stderr)
        write_json(self.manifest, dict(settings=self.settings, pid=os.getpid(), host=socket.gethostname()))

    def items(self, i):
        with open(os.path.join(self.path(i), 'items.json')) as f:
            return json.load(f)

    def counts(self, i):
        """(items, bytes) of shard i if it is finished, else None (a finished one's are kept: they do not change)."""
        if i not in self.known and os.path.isfile(os.path.join(self.path(i), 'items.json')):
            items = self.items(i)
            self.known[i] = (len(items['kinds']), sum(items['nbytes']))
        return self.known.get(i)

    def select(self, shards, val_fraction, min_val_docs, max_docs, max_bytes):
        """(the run's totals, {shard: the split of each of its documents}) over the items of all parts in order:
        --max_docs and --max_bytes end the input (after the item that reaches max_bytes); a document goes to val if
        fewer than min_val_docs went there before it or its key hashes below val_fraction."""
        totals, splits, first_index = new_totals(), {}, 0
        for i, shard in enumerate(shards):
            if (max_docs and totals['inputs'] >= max_docs) or (max_bytes and totals['input_bytes'] >= max_bytes):
                break
            items = self.items(i)
            keyed = not isinstance(shard.keys, str)
            first_index = 0 if keyed or i == 0 or shards[i - 1].keys != shard.keys else first_index
            skipped, which, inputs_before = dict(items['skipped']), [], totals['inputs']
            for j, (nbytes, kind) in enumerate(zip(items['nbytes'], items['kinds'])):
                if (max_docs and totals['inputs'] >= max_docs) or (max_bytes and totals['input_bytes'] >= max_bytes):
                    break
                totals['inputs'], totals['input_bytes'] = totals['inputs'] + 1, totals['input_bytes'] + nbytes
                key = shard.keys[j] if keyed else f"{shard.keys}{first_index + j}"
                if kind == 'x':
                    totals['skipped'][skipped[j]] = totals['skipped'].get(skipped[j], 0) + 1
                    if len(totals['skipped_examples']) < 5:
                        totals['skipped_examples'].append(f"{key}: {skipped[j]}")
                    continue
                totals['prescored' if kind == 'p' else 'scored'] += 1
                val = totals['documents']['val'] < min_val_docs or key_hash(key) < val_fraction
                totals['documents']['val' if val else 'train'] += 1
                which.append(int(val))
            taken = totals['inputs'] - inputs_before
            for j, n, errors in items['failures']:
                if j < taken:
                    totals['score_failures'] += n
                    totals['score_failure_examples'] += errors[:max(0, 5 - len(totals['score_failure_examples']))]
            first_index += len(items['kinds'])
            n_docs = len(items['kinds']) - len(skipped)
            splits[i] = np.array(which + [PAST_LIMITS] * (n_docs - len(which)), dtype=np.int8)
        return totals, splits

    def write(self, staging, splits, **header):
        """Copy the documents into staging/{train,val}, in shard order: the bytes one writer would write."""
        writers = {}
        try:
            for split in SPLITS:
                writers[split] = DatasetWriter(os.path.join(staging, split), split=split, **header)
            for i, which in splits.items():
                if (which == PAST_LIMITS).all():
                    continue
                d0 = 0
                for tokens, seg_lens, seg_scores, doc_nseg, doc_scores in PreparedData(
                        os.path.join(self.path(i), 'docs')).chunks():
                    part_which, d0 = which[d0:d0 + len(doc_nseg)], d0 + len(doc_nseg)
                    for code, split in enumerate(SPLITS):
                        if (part_which == code).any():
                            writers[split].add_arrays(*take(part_which == code, tokens, seg_lens, seg_scores,
                                                            doc_nseg, doc_scores))
            for w in writers.values():
                w.close()
        except BaseException:
            for w in writers.values():
                w.abort()
            raise

    def close(self, complete):
        """Keep the parts only where an interrupted run finished some shards: the next run continues after them."""
        done = len(self.finished()) if os.path.isdir(self.dir) else 0
        if complete or not done:
            shutil.rmtree(self.dir, ignore_errors=True)
        else:
            print(f"kept the {done} finished shards in {self.dir}: the same command continues after them",
                  file=sys.stderr)


def take(keep, tokens, seg_lens, seg_scores, doc_nseg, doc_scores):
    """The arrays of the documents where keep is True, from those of a chunk of documents (PreparedData.chunks)."""
    doc_tokens = np.add.reduceat(seg_lens, np.concatenate([[0], np.cumsum(doc_nseg)[:-1]]))
    keep_seg = np.repeat(keep, doc_nseg)
    return (tokens[np.repeat(keep, doc_tokens)], seg_lens[keep_seg], seg_scores[keep_seg], doc_nseg[keep],
            doc_scores[keep])
