"""prepare.py's shards and ranks: the plan (byte ranges, runs of files, which rank takes which shard) by hand; any shard
size, a full disk, a scorer failing on texts; 2 gloo ranks under torchrun, on one machine or as two machines that meet
at a rendezvous, write the bytes one process writes, also after a rank is killed mid-shard, and a rank that fails
stops the job with one line naming it. Then a corpus scored by a Hugging Face classifier through to training's
thresholds and evaluation's scorer."""
import collections
import errno
import gzip
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import classifiers
import devices
import prepare
import scorers
import settings
import sources
import staging
from conftest import HUB_COMMIT, ROOT_DIR, tiny_classifier
from data import DataError, PreparedData
from test_hub import output, sentences_records

WORDS = ['you', 'are', 'an', 'idiot', 'have', 'a', 'nice', 'day', 'hello', 'world']


def test_assign_the_largest_shard_to_the_least_loaded_rank():
    Shard = collections.namedtuple('Shard', 'nbytes')
    shards = [Shard(5), Shard(9), Shard(3), Shard(9), Shard(1)]
    # 1 (9) to rank 0, 3 (9) to rank 1, 0 (5) to rank 0 (9 = 9: the lower), 2 (3) to rank 1 (9 < 14), 4 (1) to 1
    assert staging.assign(shards, {0, 1, 2, 3, 4}, 2) == {0: [0, 1], 1: [2, 3, 4]}
    assert staging.assign(shards, {0, 2}, 3) == {0: [0], 1: [2], 2: []}


def test_byte_ranges_cut_after_a_complete_line(tmp_path):
    path = tmp_path / 'docs.jsonl'
    lines = [b'{"text": "a"}\n', b'\n', b'{"text": "bb"}\n', b'   \n', b'{"text": "c"}\n', b'{"text": "d"}']
    path.write_bytes(b''.join(lines))  # lines at 0, 14, 15, 30, 34, 48; 61 bytes
    assert sources.line_ranges(str(path), 61, 16) == [(0, 48), (48, 61)]
    # 10: after the line of 'bb' (the first complete non-blank line after byte 10); 20 and 30: not past that cut;
    # 40: the next complete non-blank line after it, 'd', ends the file
    assert sources.line_ranges(str(path), 61, 10) == [(0, 30), (30, 61)]
    assert sources.line_ranges(str(path), 61, 100) == [(0, 61)]
    whole = [(r['text'], n) for _, r, _, n in sources.file_records(str(path))]
    assert whole == [('a', 14), ('bb', 16), ('c', 18), ('d', 13)]  # blank lines count with the record after them
    ranges = [list(sources.file_records(str(path), 'f:', a, b)) for a, b in [(0, 30), (30, 61)]]
    assert [[(r['text'], key, n) for _, r, key, n in items] for items in ranges] == [
        [('a', 'f:0', 14), ('bb', 'f:1', 16)], [('c', 'f:0', 18), ('d', 'f:1', 13)]]  # indices from the range


def sentence_list(i):
    rng = np.random.default_rng(i)
    return [' '.join(rng.choice(WORDS, rng.integers(1, 12))) + '.' for _ in range(rng.integers(1, 5))]


def sentences(i):
    return ' '.join(sentence_list(i))


def write_jsonl(path, n):
    with open(path, 'w') as f:
        for i in range(n):
            f.write(json.dumps({'text': sentences(i)}) + ('\n\n' if i % 7 == 3 else '\n'))  # some blank lines
    return str(path)


class LengthScorer(scorers.Scorer):
    """Batched in the main process, like a classifier: len(text) / 100; fails on a text with 'idiot'."""
    name, batch_size, parallel = 'length', 8, False

    def score_batch(self, texts):
        if any('idiot' in t for t in texts):
            raise ValueError('idiot')
        return [len(t) / 100 for t in texts]


def test_the_shard_size_does_not_change_the_output(tmp_path, monkeypatch):
    monkeypatch.setitem(scorers.SCORERS, 'length', LengthScorer)
    docs = write_jsonl(tmp_path / 'docs.jsonl', 60)
    folder = tmp_path / 'text'
    for i in range(12):
        (folder / f'd{i % 3}').mkdir(parents=True, exist_ok=True)
        (folder / f'd{i % 3}' / f'{i}.txt').write_text(sentences(100 + i).replace('day', 'me at a@b.com'))
    assert len(sources.source_items(None, docs, 300)[1]) >= 10  # byte ranges
    assert len(sources.source_items(prepare.get_task('pii'), str(folder), 300)[1]) >= 3  # runs of files
    for task, source, scorer in (('toxicity', docs, 'length'), ('pii', str(folder), 'pii')):
        for limits in ({}, dict(max_docs=25), dict(max_bytes=1000)):
            outputs = []
            for shard_bytes in (sources.SHARD_BYTES, 300) + ((1,) if not limits else ()):  # 1: a file or record each
                out = str(tmp_path / f'out{shard_bytes}')
                s = prepare.prepare(task, source, out, scorer=scorer, min_val_docs=2, val_fraction=0.2, processes=1,
                                    progress=False, shard_bytes=shard_bytes, **limits)
                outputs.append(output(out))
            assert all(o == outputs[0] for o in outputs[1:]), (task, limits)
            if task == 'toxicity' and 'max_bytes' not in limits:  # failures past --max_docs are not counted
                idiots = sum('idiot' in t for i in range(limits.get('max_docs', 60)) for t in sentence_list(i))
                assert s['score_failures'] == idiots and idiots > 5


def test_a_gzipped_json_lines_file_gives_every_record(tmp_path):
    path = tmp_path / 'docs.jsonl.gz'
    path.write_bytes(gzip.compress(b''.join(json.dumps({'text': sentences(i)}).encode() + b'\n' for i in range(10))))
    _, shards = sources.source_items(prepare.get_task('toxicity'), str(path), 100)
    assert len(shards) == 1  # a gzipped file is never cut
    items = list(shards[0].items())
    assert [r['text'] for _, r, _, _ in items] == [sentences(i) for i in range(10)]  # not only the first
    assert [key for _, _, key, _ in items] == [str(i) for i in range(10)]
    assert sum(n for _, _, _, n in items) == path.stat().st_size


def test_a_folder_of_data_files_is_a_corpus_of_their_records(tmp_path, monkeypatch):
    from test_hub import parquet
    from tokenizer import decode
    monkeypatch.setitem(scorers.SCORERS, 'length', LengthScorer)
    web = tmp_path / 'web'
    (web / 'sub').mkdir(parents=True)
    write_jsonl(web / 'a.jsonl', 30)
    (web / 'sub' / 'b.jsonl.gz').write_bytes(gzip.compress(b''.join(
        json.dumps({'text': sentences(100 + i)}).encode() + b'\n' for i in range(10))))
    (web / 'c.parquet').write_bytes(parquet([{'text': sentences(200 + i)} for i in range(8)]))
    (web / 'empty.jsonl').write_bytes(b'')
    texts = {**{f'a.jsonl:{i}': sentences(i) for i in range(30)}, **{f'c.parquet:{i}': sentences(200 + i)
                                                                     for i in range(8)},
             **{f'sub/b.jsonl.gz:{i}': sentences(100 + i) for i in range(10)}}  # by key, in path order
    desc, shards = sources.source_items(prepare.get_task('toxicity'), str(web), 300)
    assert desc == str(web) and len(shards) >= 4  # a.jsonl in byte ranges, then c.parquet, then sub/b.jsonl.gz
    assert [s.name for s in shards[-2:]] == [f'{web}/c.parquet', f'{web}/sub/b.jsonl.gz']
    assert {s.keys for s in shards} == {'a.jsonl:', 'c.parquet:', 'sub/b.jsonl.gz:'}
    assert sum(s.nbytes for s in shards) == sum(p.stat().st_size for p in web.rglob('*') if p.is_file())
    outputs = []
    for shard_bytes in (sources.SHARD_BYTES, 300):
        out = str(tmp_path / f'out{shard_bytes}')
        s = prepare.prepare('toxicity', str(web), out, scorer='length', min_val_docs=2, val_fraction=0.3, processes=1,
                            progress=False, shard_bytes=shard_bytes)
        outputs.append(output(out))
    assert outputs[0] == outputs[1]
    # val: the first 2 records (a.jsonl's) and those whose key hashes below 0.3, in path order
    val = [k for n, k in enumerate(texts) if n < 2 or sources.key_hash(k) < 0.3]
    assert s['documents'] == dict(train=48 - len(val), val=len(val)) and s['skipped'] == {}
    assert s['input_bytes'] == sum(shard.nbytes for shard in shards)
    got = PreparedData(os.path.join(out, 'val'))
    assert [decode(got.document(d)[0]) for d in range(got.n_documents)] == [
        ''.join(prepare.segment(prepare.get_task('toxicity'), texts[k])) for k in val]
    (web / 'notes.txt').write_text('Hello.')
    with pytest.raises(DataError, match=rf"^{web}: holds data files \(a.jsonl\) and text files \(notes.txt\); a "
                                        rf"source is one kind or the other"):
        sources.source_items(prepare.get_task('pii'), str(web), 300)


def test_a_folder_of_links_to_data_files_reads_each_target_once(tmp_path):
    from test_hub import parquet
    blobs, snapshot = tmp_path / 'blobs', tmp_path / 'snapshot'  # as the hub client's cache keeps a dataset
    (snapshot / 'data').mkdir(parents=True)
    blobs.mkdir()
    write_jsonl(blobs / 'x', 5)
    (blobs / 'y').write_bytes(parquet([{'text': sentences(i)} for i in range(3)]))
    for name, target in (('a.jsonl', 'x'), ('b.parquet', 'y'), ('c.jsonl', 'x'), ('d.jsonl', 'gone')):
        (snapshot / 'data' / name).symlink_to(blobs / target)
    desc, shards = sources.source_items(prepare.get_task('pii'), str(snapshot), 10 ** 6)
    assert [s.name for s in shards] == [f'{snapshot}/data/a.jsonl', f'{snapshot}/data/b.parquet']  # x once; no 'gone'
    assert [len(list(s.items())) for s in shards] == [5, 3]


def test_records_whose_text_is_in_another_field(tmp_path, monkeypatch, capsys):
    from tokenizer import decode
    monkeypatch.setitem(scorers.SCORERS, 'length', LengthScorer)
    code = tmp_path / 'stack.jsonl'  # The Stack's schema: the file's text in 'content'
    code.write_text(''.join(json.dumps({'content': f'x = {i}\ny = {i}\n', 'lang': 'Python'}) + '\n' for i in range(4)))
    out = str(tmp_path / 'out')
    with pytest.raises(SystemExit, match=rf"^error: {code}: no usable documents in 4 inputs \(4 no 'text' or "
                                         rf"'texts'\); --text_field names the field that holds the text$"):
        prepare.main(['pep8', f'--source={code}', f'--out_dir={out}', '--processes=1'])
    s = prepare.prepare('pep8', str(code), out, scorer='length', text_field='content', min_val_docs=1, processes=1,
                        progress=False)
    assert s['documents'] == dict(train=3, val=1) and s['segments'] == dict(train=6, val=2)
    assert s['settings']['text_field'] == 'content'
    val = PreparedData(os.path.join(out, 'val'))
    assert decode(val.document(0)[0]) == 'x = 0\ny = 0\n'  # the first, held out as --min_val_docs says
    assert val.seg_scores.tolist() == pytest.approx([0.06, 0.06])  # LengthScorer: 6 characters a line


def test_a_full_disk_keeps_the_finished_shards(tmp_path, monkeypatch, capsys):
    folder = tmp_path / 'text'
    for i in range(6):
        (folder / f'{i}.txt').parent.mkdir(exist_ok=True)
        (folder / f'{i}.txt').write_text(sentences(i) + ' Mail a@b.com now.')
    whole, out = str(tmp_path / 'whole'), str(tmp_path / 'out')
    prepare.prepare('pii', str(folder), whole, min_val_docs=1, processes=1, progress=False, shard_bytes=1)
    write_json, calls = staging.write_json, []

    def full_at_the_third(path, obj, **kwargs):
        calls.append(path)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return write_json(path, obj, **kwargs)
    monkeypatch.setattr(staging, 'write_json', full_at_the_third)  # the manifest, then each shard's items.json
    with pytest.raises(DataError, match=rf"^shard 2 of 6 \({folder} files 2-2 of 6\): not written, No space left on "
                                        rf"device; the finished shards are kept: free space \(or fix the cause\) and "
                                        rf"run the same command$"):
        prepare.prepare('pii', str(folder), out, min_val_docs=1, processes=1, progress=False, shard_bytes=1)
    assert sorted(os.listdir(out + '.parts')) == ['00000', 'manifest.json']
    monkeypatch.setattr(staging, 'write_json', write_json)
    monkeypatch.setattr(staging.Parts, 'write', lambda *a, **k: (_ for _ in ()).throw(OSError(errno.ENOSPC, 'full')))
    with pytest.raises(DataError, match=rf"{out}.tmp-\d+: not written, full; the finished shards are kept in "
                                        rf"{out}.parts: free space"):
        prepare.prepare('pii', str(folder), out, min_val_docs=1, processes=1, progress=False, shard_bytes=1)
    assert 'resuming: 1 of 6 shards' in capsys.readouterr().err
    monkeypatch.undo()
    prepare.prepare('pii', str(folder), out, min_val_docs=1, processes=1, progress=False, shard_bytes=1)
    assert 'resuming: 6 of 6 shards' in capsys.readouterr().err  # scored before the disk filled: only assembled
    assert output(out) == output(whole)
    assert sorted(os.listdir(tmp_path)) == ['out', 'text', 'whole']


def test_a_corrupt_parquet_shard_is_one_line_naming_it(tmp_path, hub_cache):
    from test_hub import parquet
    repo = prepare.get_task('pii').hf_dataset
    hub_cache(repo, 'data/train-00000-of-00002.parquet', parquet(sentences_records(0, n=4)))
    path = hub_cache(repo, 'data/train-00001-of-00002.parquet', b'PAR1 not really parquet PAR1')
    with pytest.raises(DataError, match=rf"^shard 2 of 2 \({HUB_COMMIT}/data/train-00001-of-00002.parquet\): "
                                        rf"{path}: not a readable parquet file \("):
        prepare.prepare('pii', '', str(tmp_path / 'out'), min_val_docs=1, processes=1, progress=False)


# ----------------------------------------------------------------------------------------------------------------
# Two ranks under torchrun

def launcher(launch, args, script=None):
    """The command line of a torchrun launcher (its own arguments: launch) running prepare.py (or script) with args."""
    return [sys.executable, '-m', 'torch.distributed.run', *launch, script or os.path.join(ROOT_DIR, 'prepare.py'),
            *args]


def one_thread(env=None):
    return {**os.environ, 'OMP_NUM_THREADS': '1', **(env or {})}


def torchrun(*args, script=None, env=None):
    return subprocess.run(launcher(['--standalone', '--nproc_per_node=2'], args, script), cwd=ROOT_DIR,
                          capture_output=True, text=True, timeout=300, env=one_thread(env))


@pytest.fixture(scope='module')
def corpus(tmp_path_factory):
    """A JSON-lines corpus in 6 byte ranges of 69 to 81 records, a tiny Hugging Face classifier, and the arguments of
    prepare.py that read the corpus."""
    root = tmp_path_factory.mktemp('corpus')
    tiny_classifier(str(root / 'clf'))
    args = [f"--source={write_jsonl(root / 'docs.jsonl', 400)}", '--shard_size=6K', '--min_val_docs=2',
            '--val_fraction=0.2', '--max_docs=380', '--processes=1']
    assert len(sources.source_items(None, str(root / 'docs.jsonl'), 6000)[1]) == 6
    return root, args


def one_process(*args):
    """What prepare.py writes in one process (this one)."""
    out = [a.partition('=')[2] for a in args if a.startswith('--out_dir=')][0]
    prepare.main(list(args))
    return output(out)


def two_nodes(*args):
    """prepare.py as two machines of one rank each run it: a torchrun per node, which meet at a rendezvous (as srun
    starts them under Slurm); here both on this machine. Returns both launchers' (code, stdout, stderr)."""
    import socket
    with socket.socket() as s:  # a free port for the rendezvous's store
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    launch = ['--nnodes=2', '--nproc_per_node=1', '--rdzv_id=two_nodes', '--rdzv_backend=c10d',
              f'--rdzv_endpoint=127.0.0.1:{port}']
    nodes = [subprocess.Popen(launcher(launch, args), cwd=ROOT_DIR, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=one_thread()) for _ in range(2)]
    try:
        outputs = [node.communicate(timeout=300) for node in nodes]
    finally:
        for node in nodes:
            node.kill()
    return [(node.returncode, *out) for node, out in zip(nodes, outputs)]


def test_two_nodes_write_the_bytes_of_one_process(corpus, capsys):
    root, args = corpus
    args = ['toxicity', *args, f"--scorer=hf:{root / 'clf'}", '--score_output=rude']  # a model, batched
    expected = one_process(*args, f"--out_dir={root / 'one'}")
    out = capsys.readouterr().out
    assert out.startswith('toxicity: 380 documents')
    assert f"{root / 'clf'} {{\"output\": \"rude\"}}: run in {devices.default_dtype('cpu')}, each text cut at 32 " \
           f"tokens, the most the model reads\n" in out
    nodes = two_nodes(*args, f"--out_dir={root / 'two'}")
    assert [code for code, _, _ in nodes] == [0, 0], [err for _, _, err in nodes]
    assert output(str(root / 'two')) == expected
    summaries = [out for _, out, _ in nodes if out.startswith('toxicity: 380 documents')]
    assert len(summaries) == 1  # global rank 0's, on one of the nodes


KILLED = """import os, signal, sys
sys.path.insert(0, {root!r})
import prepare
process_item, seen = prepare.process_item, []

def killed(kind, payload, key, nbytes):  # rank 1 dies at the 67th record of its second shard, its first 64 written
    if os.environ['RANK'] == '1' and key == '66':
        seen.append(key)
        if len(seen) == 2:
            os.kill(os.getpid(), signal.SIGKILL)
    return process_item(kind, payload, key, nbytes)

prepare.process_item = killed
prepare.main(sys.argv[1:])
"""
LOGGED = """import os, sys
sys.path.insert(0, {root!r})
import prepare, staging
begin = staging.Part.__init__

def logged(self, path, **header):  # which shards this run scores
    with open({log!r}, 'a') as f:
        f.write(os.path.basename(path) + '\\n')
    begin(self, path, **header)

staging.Part.__init__ = logged
prepare.main(sys.argv[1:])
"""
OTHER_DTYPE = """import os, sys
sys.path.insert(0, {root!r})
import prepare, scorers
if os.environ['RANK'] == '1':  # as on a node whose device runs the model in another dtype than rank 0's
    scorers.ClassifierScorer.precision = lambda self: 'float16'
prepare.main(sys.argv[1:])
"""


def test_ranks_that_would_score_in_other_dtypes_stop_before_scoring(corpus, tmp_path):
    root, args = corpus
    (tmp_path / 'other_dtype.py').write_text(OTHER_DTYPE.format(root=ROOT_DIR))
    done = torchrun('toxicity', *args, f"--scorer=hf:{root / 'clf'}", '--score_output=rude',
                    f"--out_dir={tmp_path / 'out'}", script=str(tmp_path / 'other_dtype.py'))
    errors = [line for line in done.stderr.splitlines() if line.startswith('error')]
    assert done.returncode != 0 and errors == ["error: rank 1: the source's shards or the scorer's dtype differ from "
                                               "rank 0's; every rank must see the same files (a filesystem all nodes "
                                               "share) and run the scorer in one dtype (--score_dtype)"], done.stderr
    assert not os.path.exists(tmp_path / 'out.parts')  # nothing scored


def test_a_resumed_run_scores_in_the_dtype_of_the_parts_it_takes(corpus, tmp_path, monkeypatch, capsys):
    root, args = corpus
    out, process_item, seen = str(tmp_path / 'out'), prepare.process_item, []

    def interrupted(kind, payload, key, nbytes):  # in the third shard, after two finished
        seen.append(key)
        if seen.count('50') == 3:
            raise RuntimeError('connection lost')
        return process_item(kind, payload, key, nbytes)
    args = ['toxicity', *args, f"--scorer=hf:{root / 'clf'}", '--score_output=rude', f'--out_dir={out}']
    for dtype, resumed in (('float32', 'resuming: 2 of 6 shards'), ('bfloat16', 'with other settings; starting again')):
        seen.clear()
        monkeypatch.setattr(prepare, 'process_item', interrupted)
        with pytest.raises(RuntimeError):
            prepare.main(args + ['--score_dtype=float32'])
        monkeypatch.setattr(prepare, 'process_item', process_item)
        capsys.readouterr()
        prepare.main(args + [f'--score_dtype={dtype}'])
        assert resumed in capsys.readouterr().err


def test_a_rank_beyond_the_machines_gpus_stops_with_one_line(corpus, tmp_path, monkeypatch):
    import torch
    root, args = corpus
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)  # as on a node with 2 GPUs and a third rank
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 2)
    monkeypatch.setenv('LOCAL_RANK', '2')
    with pytest.raises(SystemExit, match=r"^error: local rank 2 on a machine with 2 GPUs: a model scorer takes a GPU "
                                         r"a rank, so start at most 2 a machine \(torchrun --nproc_per_node=2\)$"):
        prepare.main(['toxicity', *args, f"--scorer=hf:{root / 'clf'}", '--score_output=rude',
                      f"--out_dir={tmp_path / 'out'}"])
    assert not os.path.exists(tmp_path / 'out.parts')  # stopped before scoring
    monkeypatch.setenv('LOCAL_RANK', '1')
    assert classifiers.default_device() == 'cuda:1'


def test_a_rank_killed_mid_shard_then_the_same_command(corpus, tmp_path):
    root, args = corpus
    args = ['pii', *args]
    expected = one_process(*args, f"--out_dir={tmp_path / 'one'}")
    out, log = str(tmp_path / 'out'), str(tmp_path / 'scored')
    (tmp_path / 'killed.py').write_text(KILLED.format(root=ROOT_DIR))
    (tmp_path / 'logged.py').write_text(LOGGED.format(root=ROOT_DIR, log=log))
    killed = torchrun(*args, f'--out_dir={out}', script=str(tmp_path / 'killed.py'))
    assert killed.returncode != 0 and not [line for line in killed.stderr.splitlines() if line.startswith('error:')]
    left = os.listdir(out + '.parts')
    finished = {int(n) for n in left if n.isdigit() and os.path.isfile(os.path.join(out + '.parts', n, 'items.json'))}
    assert finished and [n for n in left if '.tmp-' in n]  # some shards finished, one (at least) left mid-way
    n_shards = len(sources.source_items(None, str(root / 'docs.jsonl'), 6000)[1])
    again = torchrun(*args, f'--out_dir={out}', script=str(tmp_path / 'logged.py'))
    assert again.returncode == 0, again.stderr
    assert f'resuming: {len(finished)} of {n_shards} shards' in again.stderr
    assert sorted(int(n) for n in open(log).read().split()) == sorted(set(range(n_shards)) - finished)
    assert output(out) == expected


def test_a_rank_that_fails_stops_the_job_with_one_line(tmp_path, hub_cache):
    repo = prepare.get_task('toxicity').hf_dataset
    blobs = [gzip.compress(''.join(json.dumps(r) + '\n' for r in sentences_records(k, n=40)).encode())
             for k in range(3)]
    blobs[1] = blobs[1][:len(blobs[1]) // 2]  # the second shard is cut short
    for k, blob in enumerate(blobs):
        hub_cache(repo, f'data/train-0000{k}-of-00003.jsonl.gz', blob)
    Shard = collections.namedtuple('Shard', 'nbytes')
    rank = next(r for r, mine in staging.assign([Shard(len(b)) for b in blobs], {0, 1, 2}, 2).items() if 1 in mine)
    done = torchrun('toxicity', f'--out_dir={tmp_path / "out"}', '--min_val_docs=1',
                    env=dict(HF_HOME=str(tmp_path / 'hf'), HF_HUB_OFFLINE='1'))
    errors = [line for line in done.stderr.splitlines() if line.startswith('error:')]
    assert done.returncode != 0 and len(errors) == 1, done.stderr
    snapshot = f"{tmp_path}/hf/hub/datasets--{repo.replace('/', '--')}/snapshots/{HUB_COMMIT}"
    path = f"{snapshot}/data/train-00001-of-00003.jsonl.gz"
    assert errors[0].startswith(f"error: rank {rank}: shard 2 of 3 ({HUB_COMMIT}/data/train-00001-of-00003.jsonl.gz): "
                                f"{path}: Compressed file ended"), errors[0]
    assert not os.path.exists(tmp_path / 'out')


# ----------------------------------------------------------------------------------------------------------------
# A classifier's scale: thresholds for training, the same scorer for evaluation

def test_thresholds_on_another_scale_come_from_the_splits_quantiles(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(scorers.SCORERS, 'length', LengthScorer)
    path = tmp_path / 'docs.jsonl'
    path.write_text(''.join(json.dumps({'text': 'y' * n}) + '\n' for n in [30] + list(range(1, 21))))
    s = prepare.prepare('toxicity', str(path), str(tmp_path / 'data' / 'toxicity'), scorer='length', min_val_docs=1,
                        val_fraction=0, processes=1, progress=False)
    # train: 20 documents of one segment scored 0.01 ... 0.20; the quantile at 5% is 0.01 + 0.95 x 0.01, at 50% 0.105
    assert s['thresholds'] == pytest.approx(dict(cond_threshold=0.0195, ul_threshold=0.0195, ul_soft=False,
                                                 filter_threshold=0.105), rel=1e-6)
    prepare.print_summary(s)
    assert ("train.py takes these, the scores' quantiles at the paper's shares (data.TASKS), unless given: "
            "--cond_threshold=0.0195 --ul_threshold=0.0195 --filter_threshold=0.105\n") in capsys.readouterr().out
    data_dir = str(tmp_path / 'data')
    cfg = settings.load_config(['--task=toxicity', '--method=ul', f'--data_dir={data_dir}'])
    assert (cfg.cond_threshold, cfg.ul_threshold, cfg.filter_threshold, cfg.ul_soft) == pytest.approx(
        (0.0195, 0.0195, 0.105, False), rel=1e-6)
    cfg = settings.load_config(['--task=toxicity', '--method=filter', f'--data_dir={data_dir}',
                                '--filter_threshold=0.3'])
    assert cfg.filter_threshold == 0.3
    os.rename(tmp_path / 'data' / 'toxicity', tmp_path / 'data' / 'pii')  # pii: the paper's share is not known
    with pytest.raises(settings.ConfigError, match=rf"^cond_threshold: {data_dir}/pii/train was scored by length, not "
                                                   rf"on the pii scorer's scale, so the task's threshold does not "
                                                   rf"apply, and the paper's share of aligned segments for pii is not "
                                                   rf"known; pass --cond_threshold"):
        settings.load_config(['--task=pii', '--method=mle', f'--data_dir={data_dir}'])
    cfg = settings.load_config(['--task=pii', '--method=filter', f'--data_dir={data_dir}', '--cond_threshold=0.1'])
    assert (cfg.cond_threshold, cfg.filter_threshold) == pytest.approx((0.1, 0.105), rel=1e-6)


def test_a_classifier_scored_split_is_judged_by_that_classifier(tmp_path):
    import torch

    import evaluate as ev
    from model import GPT, GPTConfig
    folder = str(tmp_path / 'clf')
    tiny_classifier(folder)
    source = write_jsonl(tmp_path / 'docs.jsonl', 30)
    with pytest.raises(scorers.ScorerError, match=rf"^shard 1 of 1 \({source}\): {tmp_path}/none: neither a folder "
                                                  rf"nor a model the Hugging Face hub gave"):
        prepare.prepare('toxicity', source, str(tmp_path / 'out'), scorer=f'hf:{tmp_path}/none', processes=1,
                        progress=False)
    s = prepare.prepare('toxicity', source, str(tmp_path / 'data' / 'toxicity'), scorer=f'hf:{folder}',
                        scorer_kwargs=dict(output='rude'), min_val_docs=2, processes=1, progress=False)
    description = f'hf:{folder} {{"output": "rude"}}'
    assert s['scorer'] == description and s['scorer_max_tokens'] == 32
    assert s['scorer_dtype'] == devices.default_dtype('cpu')  # bfloat16 where the CPU has it natively
    assert PreparedData(str(tmp_path / 'data' / 'toxicity' / 'train')).header['scorer'] == description
    segment = prepare.split_sentences(sentences(0))[0]
    assert PreparedData(str(tmp_path / 'data' / 'toxicity' / 'val')).seg_scores[0] == pytest.approx(
        scorers.get_scorer(description).score([segment])[0], abs=1e-6)  # the first document is held out
    cfg = settings.load_config(['--task=toxicity', f'--data_dir={tmp_path / "data"}', f'--out_dir={tmp_path / "o"}',
                                '--block_size=64', '--eval_samples=6', '--eval_iters=0', '--eval_max_new_tokens=8'])
    assert cfg.cond_threshold == pytest.approx(s['thresholds']['cond_threshold'])
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=64)).eval()
    result = ev.evaluate(model, cfg, 1, 1, 'cpu')
    with open(tmp_path / 'o' / 'eval_step1.json') as f:
        saved = json.load(f)
    texts = [x['text'] for x in saved['samples']['unconditional']]
    exact = scorers.get_scorer(description, dtype='float32').score(texts)
    assert saved['scores']['unconditional'] == pytest.approx(exact, abs=1e-6)  # float32 on a CPU, as the rest
    hits = np.mean(np.array(saved['scores']['unconditional']) > cfg.cond_threshold)
    assert result['unconditional/num_hits'] == hits
