"""
Where prepare.py's documents come from, each as an item (kind, payload, key, nbytes): 'file' items (a path) from a
folder or this machine's local corpora, 'record' items (a dict, or None for a line that is not JSON) from JSON lines,
parquet, or the paper's datasets on the Hugging Face hub. Files are listed in the order of a hash of their key, so
any prefix of them is a random sample.
"""
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


def corpus_files(task, roots):
    """(path, key, size) of the files under roots [(folder, key prefix, which names it takes)], in key-hash order."""
    files = []
    for root, prefix, wanted in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS and not d.startswith('.')]
            for name in filenames:
                path = os.path.join(dirpath, name)
                if wanted(name) and not os.path.islink(path):  # a link would count its target twice
                    files.append((path, prefix + os.path.relpath(path, root), os.path.getsize(path)))
    if not files:
        kinds = '.py' if task.segment == 'lines' else ' or '.join(TEXT_EXTS)
        raise DataError(f"{' and '.join(r[0] for r in roots)}: no {kinds} files; the corpus is empty")
    files.sort(key=lambda f: key_hash('order:' + f[1]))  # independent of the split hash
    return files


def shard_records(f, name):
    """(record, nbytes) of one data file opened in binary mode: JSON lines (gzipped if name ends in .gz) or parquet
    (needs pyarrow). The record is None for a line that is not valid JSON."""
    if name.endswith('.parquet'):
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise DataError(f"{name}: reading parquet needs pyarrow: pip install pyarrow") from None
        for batch in pq.ParquetFile(f).iter_batches(batch_size=256):
            for r in batch.to_pylist():
                yield r, sum(map(len, r.get('texts') or [r.get('text') or '']))
        return
    try:
        for line in (gzip.open(f) if name.endswith('.gz') else f):
            if line.strip():
                try:
                    yield json.loads(line), len(line)
                except ValueError:  # invalid JSON or not UTF-8
                    yield None, len(line)
    except (OSError, EOFError) as e:  # a corrupt gzip stream
        raise DataError(f"{name}: {e}") from None


def hub_records(repo, fs=None):
    """Records of a Hugging Face dataset repo, its data files in path order (no `datasets` package needed).
    fs: any fsspec filesystem holding datasets/{repo}/... (default: the hub's)."""
    try:
        if fs is None:
            from huggingface_hub import HfFileSystem
            fs = HfFileSystem()
        files = sorted(p for p in fs.find(f"datasets/{repo}") if p.endswith(SHARD_EXTS))
    except Exception as e:
        raise DataError(f"hf.co/datasets/{repo}: cannot list it ({type(e).__name__}: {str(e)[:100]}); offline, "
                        f"use --source=local or --source=PATH") from None
    files = [p for p in files if 'train' in os.path.basename(p)] or files  # the paper's datasets: train only
    if not files:
        raise DataError(f"hf.co/datasets/{repo}: no data files ({', '.join(SHARD_EXTS)})")
    for path in files:
        with fs.open(path, 'rb') as f:
            yield from shard_records(f, path)


def source_items(task, source):
    """(description, total input bytes or None, items) of a --source; errors in the path come here, up front."""
    if not source:
        return f"hf:{task.hf_dataset}", None, (('record', r, str(i), n)
                                               for i, (r, n) in enumerate(hub_records(task.hf_dataset)))
    if source not in ('local', 'local+site') and not os.path.exists(source):
        raise DataError(f"{source}: no such file or directory")
    if os.path.isfile(source):
        if not source.endswith(SHARD_EXTS):
            raise DataError(f"{source}: a file source must be JSON lines ({', '.join(SHARD_EXTS)}); pass a folder "
                            f"for text or code files")
        if os.path.getsize(source) == 0:
            raise DataError(f"{source}: empty file; the corpus is empty")

        def records():
            with open(source, 'rb') as f:
                for i, (r, n) in enumerate(shard_records(f, source)):
                    yield 'record', r, str(i), n
        return os.path.abspath(source), None if source.endswith('.gz') else os.path.getsize(source), records()
    if source in ('local', 'local+site'):
        roots = local_roots(task, source)
        desc = f"{source} ({', '.join(r[0] for r in roots)})"
    else:
        wanted = (lambda n: n.endswith('.py')) if task.segment == 'lines' else (lambda n: n.endswith(TEXT_EXTS))
        roots, desc = [(source, '', wanted)], os.path.abspath(source)
    files = corpus_files(task, roots)
    return desc, sum(f[2] for f in files), (('file', path, key, size) for path, key, size in files)


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
