"""
Where prepare.py's documents come from, as a plan of shards of items (kind, payload, key, nbytes): 'file' items (a
path) from a folder or this machine's local corpora, 'record' items (a dict, or None for a line that is not JSON) from
JSON lines, parquet (a file, or a folder of them), or the paper's datasets on the Hugging Face hub. nbytes is the part
of the source's bytes on disk the item accounts for, so the items of a shard add up to its size.

The shards, the unit a rank scores whole and a restarted run skips once finished: each data file of the hub or of a
folder, or a single one, a JSON-lines file larger than shard_bytes in byte ranges that start and end at line
boundaries (a gzipped or parquet file is one shard); a folder's text files in runs of about shard_bytes. Text files
are listed in the order of a hash of their key, so any prefix of them is a random sample; data files in path order,
as the hub's. A text document's key is its file's path under the folder, a record's its file's prefix (its path
under the folder or the hub's snapshot and a colon; none for a single file) and its index in the file; in the second
and later byte ranges of a file that index counts from the range's start, and prepare.py's assembly adds the records
of the ranges before it (Shard.keys says which).
"""
import collections
import functools
import gzip
import hashlib
import json
import os
import site
import sysconfig

from data import DataError

SHARD_EXTS = ('.jsonl', '.jsonl.gz', '.json', '.json.gz', '.parquet')
TEXT_EXTS = ('.txt', '.md', '.gz')
SKIP_DIRS = {'site-packages', 'dist-packages', '__pycache__'}  # site-packages only with --source=local+site
SHARD_BYTES = 256 * 10 ** 6  # prepare.py --shard_size: about this much input per shard of a folder or large file
# items(): a new iterator over the shard's items; keys: the keys of its files' items, in order, or for records the
# prefix of their keys (the same prefix on consecutive shards: the ranges of one file, whose indices run on)
Shard = collections.namedtuple('Shard', 'name nbytes items keys')


def key_hash(key):
    """A stable hash of a document key in [0, 1)."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), 'big') / 2 ** 64


DEBIAN_DOCS = '/usr/share/doc'  # Debian-like systems: changelogs and copyright files with names, emails, URLs
PACKAGE_DOC_NAMES = ('LICENSE', 'LICENCE', 'COPYING', 'AUTHORS', 'README', 'NOTICE', 'CHANGELOG', 'CHANGES')


def is_debian_doc(name):
    return name == 'copyright' or (name.startswith('changelog') and name.endswith('.gz'))


def is_package_doc(name):
    """An installed package's metadata (its long description is the README, with author names and emails) or one of
    its licence, author, readme or changelog files: text that every Python installation has."""
    stem, ext = os.path.splitext(name)
    return name in ('METADATA', 'PKG-INFO') or (stem.upper().startswith(PACKAGE_DOC_NAMES) and
                                                ext.lower() in ('', '.txt', '.md', '.rst'))


def site_dirs():
    return [p for p in dict.fromkeys(site.getsitepackages() + [site.getusersitepackages()]) if os.path.isdir(p)]


def local_roots(task, source):
    """[(folder, key prefix, which file names it takes)] of the local corpus. For text: /usr/share/doc where the
    system has one, else the installed Python packages' documentation, so --source=local works wherever Python does;
    'local+site' reads both."""
    is_python = lambda name: name.endswith('.py')
    if task.local_source == 'stdlib':
        return [(sysconfig.get_paths()['stdlib'], 'stdlib/', is_python)] + (
            [(p, 'site/', is_python) for p in site_dirs()] if source == 'local+site' else [])
    if task.local_source == 'docs':
        debian = any(is_debian_doc(n) for _, _, names in os.walk(DEBIAN_DOCS) for n in names)
        return ([(DEBIAN_DOCS, '', is_debian_doc)] if debian else []) + (
            [(p, 'site/', is_package_doc) for p in site_dirs()] if source == 'local+site' or not debian else [])
    raise DataError(f"{task.name}: no --source={source} corpus here; pass --source=PATH (a folder or a JSONL file)")


def list_files(roots, links=False):
    """(path, key, size) of the files under roots [(folder, key prefix, which names it takes)]; links to files too if
    links (a hub snapshot's files are links to its blobs), else not (a link would count its target twice)."""
    files = []
    for root, prefix, wanted in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS and not d.startswith('.')]
            for name in filenames:
                path = os.path.join(dirpath, name)
                if wanted(name) and (not os.path.islink(path) or links and os.path.exists(path)):  # not dangling
                    files.append((path, prefix + os.path.relpath(path, root), os.path.getsize(path)))
    return files


def in_hash_order(files):
    """Files (path, key, size) in the order of a hash of their key, independent of the split's hash: any prefix of
    them is a random sample."""
    return sorted(files, key=lambda f: key_hash('order:' + f[1]))


def corpus_files(task, roots):
    """(path, key, size) of the files under roots [(folder, key prefix, which names it takes)], in key-hash order."""
    files = list_files(roots)
    if not files:
        kinds = '.py' if task.segment == 'lines' else ' or '.join(TEXT_EXTS)
        raise DataError(f"{' and '.join(r[0] for r in roots)}: no {kinds} files; the corpus is empty")
    return in_hash_order(files)


def shard_records(f, name, end=None):
    """(record, nbytes) of one data file opened in binary mode, from where f is: JSON lines (gzipped if name ends in
    .gz) up to byte `end`, or parquet. The record is None for a line that is not valid JSON. nbytes: the file's bytes
    read since the previous record (for gzip, compressed bytes; for parquet, the record's share of the file), so they
    add up to the file's size."""
    if name.endswith('.parquet'):
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise DataError(f"{name}: reading parquet needs pyarrow (requirements.txt): pip install pyarrow") from None
        try:
            pf, size = pq.ParquetFile(f), os.fstat(f.fileno()).st_size
            i, rows = 0, max(pf.metadata.num_rows, 1)
            for batch in pf.iter_batches(batch_size=256):
                for r in batch.to_pylist():
                    yield r, size * (i + 1) // rows - size * i // rows
                    i += 1
        except (OSError, ValueError) as e:  # pyarrow's errors for a damaged file (ArrowInvalid is a ValueError)
            raise DataError(f"{name}: not a readable parquet file ({str(e).splitlines()[0][:200]})") from None
        return
    lines = f
    if name.endswith('.gz'):  # one shard, read to its end: f.tell() is where gzip has read ahead to, not a record's end
        lines, end = gzip.open(f), None
    pos = done = f.tell()
    try:
        for line in lines:
            if end is not None and pos >= end:
                return
            pos = f.tell() if lines is not f else pos + len(line)
            if line.strip():
                try:
                    record = json.loads(line)
                except ValueError:  # invalid JSON or not UTF-8
                    record = None
                yield record, pos - done
                done = pos
    except (OSError, EOFError) as e:  # a corrupt gzip stream
        raise DataError(f"{name}: {e}") from None


def file_records(path, key_prefix='', start=0, end=None):
    """'record' items of a data file (from byte `start` to `end`), keyed by key_prefix + their index in it (counted
    from `start`)."""
    with open(path, 'rb') as f:
        f.seek(start)
        for i, (r, n) in enumerate(shard_records(f, path, end)):
            yield 'record', r, f"{key_prefix}{i}", n


def line_ranges(path, size, shard_bytes):
    """[(start, end)] byte ranges of about shard_bytes covering a JSON-lines file. Each cut is just after a complete
    non-blank line, so the ranges hold exactly the whole file's records, each with the bytes it had there (blank
    lines count with the record after them)."""
    cuts = [0]
    with open(path, 'rb') as f:
        for target in range(shard_bytes, size, shard_bytes):
            if target <= cuts[-1]:
                continue
            f.seek(target)
            f.readline()  # the rest of the line the target falls in
            for line in iter(f.readline, b''):
                if line.strip():
                    break
            if cuts[-1] < f.tell() < size:
                cuts.append(f.tell())
    return list(zip(cuts, cuts[1:] + [size]))


def hub_files(repo):
    """(snapshot folder, data files in it) of a dataset repo, through the Hugging Face hub client's cache ($HF_HOME/hub,
    or $HF_HUB_CACHE): snapshot_download fetches what is missing (resuming a partial file, skipping finished ones)
    and, offline (HF_HUB_OFFLINE=1), uses the cached copy. The files with 'train' in their path where there are any
    (the paper's datasets have only a train split)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import filter_repo_objects
    try:
        for patterns in ([f'*train*{ext}' for ext in SHARD_EXTS], [f'*{ext}' for ext in SHARD_EXTS]):
            folder = snapshot_download(repo, repo_type='dataset', allow_patterns=patterns)
            cached = [os.path.relpath(os.path.join(d, n), folder) for d, _, names in os.walk(folder) for n in names]
            files = sorted(filter_repo_objects(cached, allow_patterns=patterns))
            if files:
                return folder, files
    except Exception as e:  # offline without a cached copy, no such repo, a dropped connection: say which
        message = str(e).strip().splitlines()[0][:200] if str(e).strip() else ''
        raise DataError(f"hf.co/datasets/{repo}: cannot get it ({type(e).__name__}: {message}); run again to "
                        f"resume the download, or offline use --source=local or --source=PATH") from None
    raise DataError(f"hf.co/datasets/{repo}: no data files ({', '.join(SHARD_EXTS)})")


def source_items(task, source, shard_bytes=SHARD_BYTES):
    """(description, [Shard]) of a --source; errors in the path come here, up front (the hub's files are fetched
    here)."""
    if not source:
        folder, files = hub_files(task.hf_dataset)
        commit = os.path.basename(folder)  # the snapshot folder is named after the commit: part of each shard's name
        return f"hf:{task.hf_dataset}", [s for name in files for s in data_file_shards(
            os.path.join(folder, name), f"{commit}/{name}", f"{name}:", shard_bytes)]
    if source not in ('local', 'local+site') and not os.path.exists(source):
        raise DataError(f"{source}: no such file or directory")
    if os.path.isfile(source):
        if not source.endswith(SHARD_EXTS):
            raise DataError(f"{source}: a file source must be JSON lines or parquet ({', '.join(SHARD_EXTS)}); pass "
                            f"a folder for text or code files")
        if os.path.getsize(source) == 0:
            raise DataError(f"{source}: empty file; the corpus is empty")
        desc = os.path.abspath(source)
        return desc, data_file_shards(source, desc, '', shard_bytes)
    if source in ('local', 'local+site'):
        roots = local_roots(task, source)
        desc = f"{source} ({', '.join(r[0] for r in roots)})"
        return desc, file_shards(desc, corpus_files(task, roots), shard_bytes)
    return folder_shards(task, source, shard_bytes)


def data_file_shards(path, name, key_prefix, shard_bytes):
    """The shards of one data file, named `name`, its records keyed key_prefix + their index: a JSON-lines file
    larger than shard_bytes in byte ranges at line boundaries, any other one whole."""
    size = os.path.getsize(path)
    ranges = line_ranges(path, size, shard_bytes) if path.endswith(('.jsonl', '.json')) else [(0, size)]
    return [Shard(name if len(ranges) == 1 else f"{name} bytes {a:,}-{b:,}", b - a,
                  functools.partial(file_records, path, key_prefix, a, b), key_prefix) for a, b in ranges]


def folder_shards(task, folder, shard_bytes):
    """(description, [Shard]) of a folder: of its data files (JSON lines, parquet: a corpus as the hub serves one) in
    path order, each file's records keyed by its path under the folder, or of its text files (.py for code) in runs.
    One kind or the other: a folder with both is refused."""
    desc = os.path.abspath(folder)
    wanted = (lambda n: n.endswith('.py')) if task.segment == 'lines' else (lambda n: n.endswith(TEXT_EXTS))
    listed = list_files([(folder, '', lambda n: n.endswith(SHARD_EXTS) or wanted(n))], links=True)
    data, targets = [], set()
    for path, key, size in sorted(listed, key=lambda f: f[1]):
        target = os.path.realpath(path)
        if key.endswith(SHARD_EXTS) and size > 0 and target not in targets:  # each file once
            data.append((path, key))
            targets.add(target)
    text = [f for f in listed if not f[1].endswith(SHARD_EXTS) and not os.path.islink(f[0])]
    if data and text:
        raise DataError(f"{folder}: holds data files ({data[0][1]}) and text files ({text[0][1]}); a source is one "
                        f"kind or the other: move one kind to another folder")
    if data:
        return desc, [s for path, key in data for s in data_file_shards(path, os.path.join(desc, key), f"{key}:",
                                                                          shard_bytes)]
    if not text:
        kinds = '.py' if task.segment == 'lines' else ' or '.join(TEXT_EXTS)
        raise DataError(f"{folder}: no {kinds} files and no data files ({', '.join(SHARD_EXTS)}); the corpus is "
                        f"empty")
    return desc, file_shards(desc, in_hash_order(text), shard_bytes)


def file_shards(desc, files, shard_bytes):
    """Shards of runs of consecutive files [(path, key, size)] of about shard_bytes each."""
    runs, size = [[]], 0
    for f in files:
        if size >= shard_bytes:
            runs.append([])
            size = 0
        runs[-1].append(f)
        size += f[2]
    first = 0
    shards = []
    for run in runs:
        name = desc if len(runs) == 1 else f"{desc} files {first + 1:,}-{first + len(run):,} of {len(files):,}"
        shards.append(Shard(name, sum(f[2] for f in run), functools.partial(file_items, run), [f[1] for f in run]))
        first += len(run)
    return shards


def file_items(files):
    return (('file', path, key, size) for path, key, size in files)


def shard_chunks(shards, todo, finished, max_docs, max_bytes):
    """(shard index, chunk of items) of the shards in todo, in order, each closed by (index, []). A shard is read up
    to max_docs items or max_bytes, its own limits, whatever the shards before it hold: what of it the output takes
    is decided at assembly. finished(i): (items, bytes) of shard i where it is finished (here or by another rank),
    else None; a shard after shards that, all read here or finished, hold max_docs items or max_bytes is not read
    (the output ends before it). A shard that cannot be read stops it with one line naming the shard."""
    read = {}  # (items, bytes) of the shards read here
    for i in sorted(todo):
        before = [read.get(j) or finished(j) for j in range(i)] if max_docs or max_bytes else [None]
        if all(before) and ((max_docs and sum(c[0] for c in before) >= max_docs)
                            or (max_bytes and sum(c[1] for c in before) >= max_bytes)):
            return
        n_items = n_bytes = 0
        try:
            for chunk in chunked(limited(shards[i].items(), max_docs, max_bytes)):
                n_items, n_bytes = n_items + len(chunk), n_bytes + sum(item[3] for item in chunk)
                yield i, chunk
        except (DataError, OSError) as e:  # a corrupt or unreadable shard
            raise DataError(f"shard {i + 1} of {len(shards)} ({shards[i].name}): {e}") from None
        read[i] = (n_items, n_bytes)
        yield i, []


def limited(items, max_docs, max_bytes):
    n = nbytes = 0
    for item in items:
        if (max_docs and n >= max_docs) or (max_bytes and nbytes >= max_bytes):
            return
        yield item
        n, nbytes = n + 1, nbytes + item[3]


def chunked(items, max_items=64, max_bytes=1 << 20):
    chunk, size = [], 0
    for item in items:
        chunk.append(item)
        size += item[3]
        if len(chunk) >= max_items or size >= max_bytes:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk
