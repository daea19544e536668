"""The paper's datasets as prepare.py gets them from the hub, offline: parquet and JSON-lines shards in the paper's
schemas, stored in a Hugging Face cache laid out as a download leaves it (conftest.hub_cache), read through the hub
client's own snapshot_download; an interrupted run resumed after its finished shards, byte for byte."""
import contextlib
import gzip
import io
import json
import os
import re
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tqdm import tqdm

import prepare
import sources
from conftest import ROOT_DIR
from data import FILES, DataError, PreparedData
from tokenizer import decode

TOXICITY = prepare.get_task('toxicity').hf_dataset
SPLITS = ('train', 'val')


def sentences_records(shard, n=12):
    """Toxicity and PII records (texts, scores, avg_score, num_sents, meta), as released; the 4th has one score
    too few."""
    records = []
    for i in range(n):
        texts = [f"Shard {shard} row {i} says hello. ", f"Then {'you idiot ' * (i % 3)}it stops."][:1 + i % 2]
        scores = [0.0001 * (i + 1), 0.9 if i % 3 else 0.0002][:len(texts)]
        records.append(dict(texts=texts, meta={'pile_set_name': 'Pile-CC'}, scores=scores[:-1] if i == 3 else scores,
                            avg_score=sum(scores) / len(scores), num_sents=len(texts)))
    return records


def parquet(records):
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(records), buf, row_group_size=5)  # several row groups per shard
    return buf.getvalue()


@pytest.fixture
def toxicity_hub(hub_cache):
    """Three parquet shards of the toxicity dataset in the cache, a dataset card beside them; their paths."""
    hub_cache(TOXICITY, 'README.md', b'# card\n')
    return [hub_cache(TOXICITY, f'data/train-0000{k}-of-00003.parquet', parquet(sentences_records(k)))
            for k in range(3)]


def output(out_dir):
    """Everything prepare.py wrote that does not depend on the clock or the machine: the split files' bytes, their
    headers without the creation time, the summary without timings and the number of processes."""
    files = {}
    for split in SPLITS:
        for name in FILES:
            with open(os.path.join(out_dir, split, name + '.bin'), 'rb') as f:
                files[f'{split}/{name}'] = f.read()
        with open(os.path.join(out_dir, split, 'header.json')) as f:
            files[f'{split}/header'] = {k: v for k, v in json.load(f).items() if k != 'created'}
    with open(os.path.join(out_dir, 'summary.json')) as f:
        files['summary'] = {k: v for k, v in json.load(f).items() if k not in ('seconds', 'peak_rss_mb', 'out_dir')}
    del files['summary']['settings']['processes']  # how many, not what
    return files


def test_parquet_shards_resume_after_an_interruption_byte_for_byte(tmp_path, toxicity_hub, monkeypatch, capsys):
    whole = str(tmp_path / 'whole')
    s = prepare.prepare('toxicity', '', whole, min_val_docs=2, val_fraction=0.2, processes=1, progress=False)
    assert s['source'] == f'hf:{TOXICITY}' and s['scorer'] == 'dataset'
    assert s['documents']['train'] + s['documents']['val'] == 33 and s['documents']['val'] >= 2  # 3 x 12, 3 skipped
    assert s['skipped'] == {'scores do not match texts': 3}
    assert s['skipped_examples'][1] == 'data/train-00001-of-00003.parquet:3: scores do not match texts'
    assert s['input_bytes'] == sum(os.path.getsize(p) for p in toxicity_hub)  # each row its share of its file
    val = PreparedData(os.path.join(whole, 'val'))
    assert decode(val.document(0)[0]) == 'Shard 0 row 0 says hello. '  # the first min_val_docs documents
    assert val.seg_scores[0] == pytest.approx(0.0001)  # the released scores, kept

    # interrupted in the second shard: the first is kept, and nothing looks like a dataset
    out = str(tmp_path / 'out')
    process_item, seen = prepare.process_item, []

    def interrupted(kind, payload, key, nbytes):
        seen.append(key)
        if key == 'data/train-00001-of-00003.parquet:5':
            raise KeyboardInterrupt
        return process_item(kind, payload, key, nbytes)
    monkeypatch.setattr(prepare, 'process_item', interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare.prepare('toxicity', '', out, min_val_docs=2, val_fraction=0.2, processes=1, progress=False)
    assert 'kept the 1 finished shards' in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ['hf', 'out.parts', 'whole']
    with open(os.path.join(out + '.parts', '00000', 'items.json')) as f:
        assert len(json.load(f)['kinds']) == 12  # the finished shard, with what each of its 12 inputs became
    assert sorted(os.listdir(out + '.parts')) == ['00000', 'manifest.json']
    os.makedirs(os.path.join(out + '.parts', '00001', 'train.tmp-999999999'))  # as a run killed in shard 2 leaves it

    # resumed, with a pool this time: the output is the uninterrupted run's
    monkeypatch.setattr(prepare, 'process_item', process_item)  # (undo() would undo the cache too)
    s = prepare.prepare('toxicity', '', out, min_val_docs=2, val_fraction=0.2, processes=2, progress=False)
    assert 'resuming: 1 of 3 shards already prepared' in capsys.readouterr().err
    assert output(out) == output(whole)
    assert sorted(os.listdir(tmp_path)) == ['hf', 'out', 'whole']  # the parts are gone once the output is in place


def test_resume_reads_only_the_unfinished_shards(tmp_path, toxicity_hub, monkeypatch, capsys):
    out, third = str(tmp_path / 'out'), 'data/train-00002-of-00003.parquet'
    process_item, seen, fail_at = prepare.process_item, [], [f'{third}:0']

    def counted(kind, payload, key, nbytes):
        if key in fail_at:
            raise RuntimeError('connection lost')
        seen.append(key.partition(':')[0])
        return process_item(kind, payload, key, nbytes)
    monkeypatch.setattr(prepare, 'process_item', counted)
    with pytest.raises(RuntimeError):
        prepare.prepare('toxicity', '', out, min_val_docs=2, processes=1, progress=False)
    fail_at.clear(), seen.clear()
    prepare.prepare('toxicity', '', out, min_val_docs=2, processes=1, progress=False)
    assert seen == [third] * 12

    # a run with other settings does not take the parts an interrupted run left
    fail_at.append(f'{third}:0')
    with pytest.raises(RuntimeError):
        prepare.prepare('toxicity', '', out, min_val_docs=2, processes=1, progress=False)
    fail_at.clear(), seen.clear(), capsys.readouterr()
    prepare.prepare('toxicity', '', out, min_val_docs=2, val_fraction=0.5, processes=1, progress=False)
    assert 'made from another source or with other settings; starting again' in capsys.readouterr().err
    assert len(seen) == 36
    other = str(tmp_path / 'other')
    prepare.prepare('toxicity', '', other, min_val_docs=2, val_fraction=0.5, processes=1, progress=False)
    got, want = output(out), output(other)
    assert got.pop('summary') == want.pop('summary')  # on its own, so that a failure names the key that differs
    assert got == want


@contextlib.contextmanager
def interrupted_at_second_shard(monkeypatch):
    """prepare.prepare inside it is interrupted (KeyboardInterrupt, as Ctrl-C) at the second shard's first document;
    afterwards prepare reads shards as before. (monkeypatch.undo() would undo the hub cache too.)"""
    process_item = prepare.process_item

    def interrupted(kind, payload, key, nbytes):
        if key == 'data/train-00001-of-00003.parquet:0':
            raise KeyboardInterrupt
        return process_item(kind, payload, key, nbytes)
    monkeypatch.setattr(prepare, 'process_item', interrupted)
    with pytest.raises(KeyboardInterrupt):
        yield
    monkeypatch.setattr(prepare, 'process_item', process_item)


def test_parts_of_a_live_run_are_refused_and_of_a_killed_one_resumed(tmp_path, toxicity_hub, monkeypatch, capsys):
    out = str(tmp_path / 'out')
    with interrupted_at_second_shard(monkeypatch):
        prepare.prepare('toxicity', '', out, min_val_docs=1, processes=1, progress=False)
    manifest_path = os.path.join(out + '.parts', 'manifest.json')
    with open(manifest_path) as f:
        manifest = json.load(f)
    dead = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'], capture_output=True, text=True)
    for pid, outcome in ((os.getppid(), 'refused'), (int(dead.stdout), 'resumed')):
        with open(manifest_path, 'w') as f:
            json.dump(dict(manifest, pid=pid), f)
        if outcome == 'refused':
            with pytest.raises(DataError, match=rf'out.parts: prepare.py pid {pid} is writing it; wait for it'):
                prepare.prepare('toxicity', '', out, min_val_docs=1, processes=1, progress=False)
        else:
            capsys.readouterr()
            prepare.prepare('toxicity', '', out, min_val_docs=1, processes=1, progress=False)
            assert 'resuming: 1 of 3 shards' in capsys.readouterr().err


def test_max_docs_cuts_across_shards_and_resumes(tmp_path, toxicity_hub, monkeypatch):
    whole = str(tmp_path / 'whole')
    s = prepare.prepare('toxicity', '', whole, min_val_docs=1, max_docs=20, processes=1, progress=False)
    assert s['documents']['train'] + s['documents']['val'] + 2 == 20  # 12 of shard 1, 8 of shard 2; 2 skipped
    out = str(tmp_path / 'out')
    with interrupted_at_second_shard(monkeypatch):
        prepare.prepare('toxicity', '', out, min_val_docs=1, max_docs=20, processes=1, progress=False)
    prepare.prepare('toxicity', '', out, min_val_docs=1, max_docs=20, processes=1, progress=False)
    assert output(out) == output(whole)


def test_pii_parquet_and_pep8_jsonl_shards(tmp_path, hub_cache):
    pii = prepare.get_task('pii').hf_dataset
    hub_cache(pii, 'data/train-00000-of-00001.parquet', parquet(sentences_records(0, n=4)))
    hub_cache(pii, 'data/test-00000-of-00001.parquet', parquet(sentences_records(9, n=4)))  # not the train split
    s = prepare.prepare('pii', '', str(tmp_path / 'pii'), min_val_docs=1, processes=1, progress=False)
    assert s['documents']['train'] + s['documents']['val'] == 3 and s['scorer'] == 'dataset'

    pep8 = prepare.get_task('pep8').hf_dataset
    code = [dict(org_text=f'x={i}\ny = {i}\n', texts=[f'x={i}\n', f'y = {i}\n'], scores=[0.25, 0.0], num_lines=2,
                 avg_score=0.125) for i in range(5)]
    plain = hub_cache(pep8, 'data/train-00000-of-00002.jsonl', ''.join(json.dumps(r) + '\n' for r in code[:3]).encode())
    gz = hub_cache(pep8, 'data/train-00001-of-00002.jsonl.gz',
                   gzip.compress(''.join(json.dumps(r) + '\n' for r in code[3:]).encode()))
    s = prepare.prepare('pep8', '', str(tmp_path / 'pep8'), min_val_docs=1, processes=1, progress=False)
    assert s['documents']['train'] + s['documents']['val'] == 5
    assert s['aligned']['conditional']['segments'] == 0.5  # the released line scores: 0.25 and 0.0
    assert os.path.getsize(plain) < s['input_bytes'] <= os.path.getsize(plain) + os.path.getsize(gz)
    shards = sources.source_items(prepare.get_task('pep8'), '', 100)[1]  # the JSON-lines file in byte ranges
    assert [s.keys for s in shards] == ['data/train-00000-of-00002.jsonl:'] * 2 + [
        'data/train-00001-of-00002.jsonl.gz:']
    assert shards[0].name.endswith('data/train-00000-of-00002.jsonl bytes 0-238')
    prepare.prepare('pep8', '', str(tmp_path / 'ranges'), min_val_docs=1, processes=1, progress=False, shard_bytes=100)
    assert output(str(tmp_path / 'ranges')) == output(str(tmp_path / 'pep8'))


def test_progress_shows_bytes_documents_tokens_and_eta(tmp_path, toxicity_hub, monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True
    monkeypatch.setattr(sys, 'stderr', Terminal())
    s = prepare.prepare('toxicity', '', str(tmp_path / 'out'), min_val_docs=1, processes=1)
    last = re.split(r'[\r\n]', sys.stderr.getvalue().strip())[-1]
    size = tqdm.format_sizeof(sum(os.path.getsize(p) for p in toxicity_hub))
    tokens = sum(s['tokens'].values())
    assert re.fullmatch(rf" *100%\|.*\| {size}/{size} \[00:0\d<00:00, .*B/s, 33 docs, {tokens:,} tokens, shard 3/3\]",
                        last), last


def cli(*args, env):
    env = {**{k: v for k, v in os.environ.items() if k != 'HF_HUB_CACHE'}, **env}  # HF_HOME decides here
    return subprocess.run([sys.executable, os.path.join(ROOT_DIR, 'prepare.py'), *args], capture_output=True,
                          text=True, env=env, cwd=ROOT_DIR)


def test_cli_honours_hf_home_and_offline_mode(tmp_path, toxicity_hub):
    env = dict(HF_HOME=str(tmp_path / 'hf'), HF_HUB_OFFLINE='1')
    r = cli('toxicity', f'--out_dir={tmp_path / "out"}', '--min_val_docs=1', env=env)
    assert r.returncode == 0 and 'toxicity: 33 documents' in r.stdout, r.stderr
    r = cli('toxicity', f'--out_dir={tmp_path / "out"}', env=dict(env, HF_HOME=str(tmp_path / 'empty')))
    assert r.returncode == 1 and r.stderr.count('\n') == 1, r.stderr
    assert r.stderr.startswith(f'error: hf.co/datasets/{TOXICITY}: cannot get it (LocalEntryNotFoundError: '), r.stderr
