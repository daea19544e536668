"""
prepare.py's output directory, built shard by shard so that an interrupted run continues where it stopped.

Each finished shard of the source (one of the hub's data files; any other source is one shard) becomes a part,
{out_dir}.parts/NNNNN/{train,val} in data.py's format, and is recorded in {out_dir}.parts/manifest.json with the
running totals after it (inputs read, documents per split, skipped inputs, ...) and the settings that made it. A run
with the same source and settings continues after the last recorded part. When every shard is done the parts are
concatenated in shard order into {out_dir}.tmp-PID, exactly as one writer would have written the documents, and that
directory replaces out_dir as a whole. So the output depends on the source, the settings and the shard order, never
on where a run stopped.
"""
import json
import os
import shutil
import sys

from data import DataError, DatasetWriter, PreparedData, pid_alive, write_json

SPLITS = ('train', 'val')


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


class Parts:
    """The shards a run has finished, in {out_dir}.parts: `done` of them, and the running totals after the last."""

    def __init__(self, out_dir, settings, totals):
        self.dir = f"{out_dir}.parts"
        self.manifest = os.path.join(self.dir, 'manifest.json')
        settings = json.loads(json.dumps(settings))  # as the manifest holds them (tuples become lists)
        found = self.read()
        if found:
            if found['pid'] != os.getpid() and pid_alive(found['pid']):
                raise DataError(f"{self.dir}: prepare.py pid {found['pid']} is writing it; wait for it or stop it")
            if found['settings'] != settings:
                print(f"{self.dir}: made from another source or with other settings; starting again", file=sys.stderr)
                found = None
            elif found['done']:
                print(f"resuming: {found['done']} of {len(settings['shards'])} shards already prepared in {self.dir}",
                      file=sys.stderr)
        if found is None:
            shutil.rmtree(self.dir, ignore_errors=True)
            os.makedirs(self.dir)
            found = dict(settings=settings, done=0, totals=totals)
        self.settings, self.done, self.totals = settings, found['done'], found['totals']
        for name in os.listdir(self.dir):  # what a killed run wrote after its last recorded shard
            if name != 'manifest.json' and not (name.isdigit() and int(name) < self.done):
                shutil.rmtree(os.path.join(self.dir, name))
        self.record()

    def read(self):
        try:
            with open(self.manifest) as f:
                found = json.load(f)
            return found if {'settings', 'done', 'totals', 'pid'} <= set(found) else None
        except (OSError, ValueError, TypeError):  # none, or not ours: start again
            return None

    def record(self):
        # the commit point of a shard
        write_json(self.manifest, dict(settings=self.settings, done=self.done, totals=self.totals, pid=os.getpid()))

    def part(self, i, split):
        return os.path.join(self.dir, f"{i:05d}", split)

    def writers(self, i, **header):
        return {split: DatasetWriter(self.part(i, split), split=split, **header) for split in SPLITS}

    def finish(self, i, writers, totals):
        """Close shard i's part (leaving out a split without documents) and record it with the totals after it."""
        for w in writers.values():
            w.close() if w.n_documents else w.abort()
        self.done, self.totals = i + 1, totals
        self.record()

    def assemble(self, staging, **header):
        """Concatenate the parts in shard order into staging/{train,val}: the same bytes one writer would write."""
        for split in SPLITS:
            with DatasetWriter(os.path.join(staging, split), split=split, **header) as w:
                for i in range(self.done):
                    if os.path.isdir(self.part(i, split)):
                        for arrays in PreparedData(self.part(i, split)).chunks():
                            w.add_arrays(*arrays)

    def close(self, complete):
        """Keep the parts only where an interrupted run finished some shards: the next run continues after them."""
        if complete or not self.done:
            shutil.rmtree(self.dir, ignore_errors=True)
        else:
            print(f"kept the {self.done} finished shards in {self.dir}: the same command continues after them",
                  file=sys.stderr)
