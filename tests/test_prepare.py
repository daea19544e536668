"""prepare.py on small corpora written here: folders, gzip, JSONL, the paper's scored records, errors, interruption."""
import gzip
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import prepare
import scorers
import sources
from conftest import ROOT_DIR
from data import EOS, DataError, PreparedData
from tokenizer import get_tokenizer

B_PY = 'import os\n\n\ndef f( a ):\n    return a\n'  # E201 and E202 on line 4


def documents(out_dir):
    """{text: per-segment scores} over both splits, and each split's size, read back through data.py."""
    enc, docs, sizes = get_tokenizer(), {}, {}
    for split in ('train', 'val'):
        d = PreparedData(os.path.join(out_dir, split))
        sizes[split] = d.n_documents
        seg_starts = np.append(np.asarray(d.seg_starts), d.n_tokens)
        for i in range(d.n_documents):
            tokens, _ = d.document(i)
            assert tokens[0] == EOS and EOS not in tokens[1:]
            s0 = d.doc_starts[i]
            s1 = d.doc_starts[i + 1] if i + 1 < d.n_documents else d.n_segments
            assert seg_starts[s1] - seg_starts[s0] == len(tokens)
            docs[enc.decode(tokens[1:].tolist())] = d.seg_scores[s0:s1].tolist()
    return docs, sizes


def write(path, content):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'wb') as f:
        f.write(content if isinstance(content, bytes) else content.encode())


@pytest.fixture
def pep8_folder(tmp_path):
    root = tmp_path / 'code'
    write(f'{root}/a.py', 'x=1\n')
    write(f'{root}/pkg/b.py', B_PY)
    write(f'{root}/pkg/c.py', 'x = 1\n')
    write(f'{root}/latin1.py', b'# caf\xe9\nx = 1\n')  # not UTF-8: skipped
    write(f'{root}/blob.py', b'\x00\x01\x02x = 1\n')  # binary: skipped
    write(f'{root}/notes.txt', 'not code\n')  # not .py: ignored
    write(f'{root}/__pycache__/d.py', 'x=1\n')  # ignored folder
    return str(root)


def test_split_sentences():
    text = 'Hello world. How are you?  Fine!\n\nMail a.b@c.com now. "Yes." Done'
    assert prepare.split_sentences(text) == ['Hello world. ', 'How are you?  ', 'Fine!\n\n', 'Mail a.b@c.com now. ',
                                             '"Yes." ', 'Done']
    assert prepare.split_sentences('one\n\ntwo\nlines') == ['one\n\n', 'two\nlines']
    assert prepare.split_sentences('') == []


def test_pep8_folder(pep8_folder, tmp_path):
    out = str(tmp_path / 'out')
    s = prepare.prepare('pep8', pep8_folder, out, min_val_docs=1, processes=1, progress=False)
    docs, sizes = documents(out)
    assert docs == {'x=1\n': [0.25], B_PY: [0, 0, 0, np.float32(2 / 12), 0], 'x = 1\n': [0.0]}
    assert sizes['val'] >= 1 and sizes['train'] + sizes['val'] == 3
    assert s['skipped'] == {'not UTF-8': 1, 'binary': 1}
    assert s['segments']['train'] + s['segments']['val'] == 7
    assert s['aligned']['conditional'] == {'threshold': 0.0, 'segments': 5 / 7}
    assert s['aligned']['filtering']['documents'] == 1 / 3  # only 'x = 1\n' scores <= 0.002361
    assert s['segment_score_quantiles']['0.5'] == 0.0
    assert s['score_failures'] == 0 and s['scorer'] == 'pep8'
    assert s['input_bytes'] == sum(os.path.getsize(os.path.join(pep8_folder, p))
                                   for p in ('a.py', 'pkg/b.py', 'pkg/c.py', 'latin1.py', 'blob.py'))
    with open(os.path.join(out, 'summary.json')) as f:
        assert json.load(f) == json.loads(json.dumps(s))
    assert sorted(os.listdir(tmp_path)) == ['code', 'out']  # nothing staged is left

    # the pool gives the same bytes; --max_docs cuts the (hash-ordered) input
    out2 = str(tmp_path / 'out2')
    prepare.prepare('pep8', pep8_folder, out2, min_val_docs=1, processes=2, progress=False)
    for split in ('train', 'val'):
        for name in ('tokens', 'seg_starts', 'seg_scores', 'doc_starts', 'doc_scores'):
            with open(f'{out}/{split}/{name}.bin', 'rb') as f1, open(f'{out2}/{split}/{name}.bin', 'rb') as f2:
                assert f1.read() == f2.read()
    s = prepare.prepare('pep8', pep8_folder, out2, min_val_docs=1, max_docs=4, processes=1, progress=False)
    assert sum(s['skipped'].values()) + s['documents']['train'] + s['documents']['val'] == 4


def test_pii_text_folder_with_gzip(tmp_path):
    root = tmp_path / 'text'
    write(f'{root}/a.txt', 'Write to john@example.com today. Or see https://example.org now.\n')
    write(f'{root}/b.md', 'No PII here. Nothing to see.\n')
    write(f'{root}/sub/c.txt.gz', gzip.compress(b'Mail jane@example.com and joe@example.com now.\n'))
    write(f'{root}/broken.gz', b'not gzip at all')
    out = str(tmp_path / 'out')
    s = prepare.prepare('pii', str(root), out, min_val_docs=1, processes=1, progress=False)
    docs, _ = documents(out)
    assert docs == {
        'Write to john@example.com today. Or see https://example.org now.\n':
            [np.float32(1 / 33), np.float32(1 / 32)],
        'No PII here. Nothing to see.\n': [0.0, 0.0],
        'Mail jane@example.com and joe@example.com now.\n': [np.float32(2 / 47)]}
    assert s['skipped'] == {'bad gzip': 1}
    assert s['aligned']['conditional']['segments'] == 2 / 5


def test_a_fifo_in_the_folder_is_skipped_and_counted(tmp_path):
    """A FIFO (or socket, or device) among the text files would block a read for good: it is left out and counted."""
    root = tmp_path / 'text'
    write(f'{root}/a.txt', 'Write to john@example.com today.\n')
    write(f'{root}/b.txt', 'No PII here.\n')
    os.mkfifo(root / 'pipe.txt')
    out = str(tmp_path / 'out')
    done = run_cli('pii', f'--source={root}', f'--out_dir={out}', '--min_val_docs=1', cwd=ROOT_DIR, timeout=120)
    assert done.returncode == 0, done.stderr
    assert 'skipped 1: 1 not a regular file (e.g. pipe.txt: not a regular file)' in done.stdout
    assert sorted(documents(out)[0]) == ['No PII here.\n', 'Write to john@example.com today.\n']


class LengthScorer(scorers.Scorer):
    """Batched in the main process, like detoxify: score = len(text) / 100."""
    name, batch_size, parallel = 'length', 8, False

    def score_batch(self, texts):
        return [len(t) / 100 for t in texts]


def test_jsonl_text_records_scored_in_main_process(tmp_path, monkeypatch):
    monkeypatch.setitem(scorers.SCORERS, 'length', LengthScorer)
    path = tmp_path / 'docs.jsonl'
    lines = [json.dumps({'text': 'First one. Second one.'}), '{not json', json.dumps({'title': 'no text'}),
             json.dumps({'text': 'Third.'}), '', json.dumps({'text': 'Fourth! Fifth?'})]
    path.write_text('\n'.join(lines) + '\n')
    out = str(tmp_path / 'out')
    s = prepare.prepare('toxicity', str(path), out, scorer='length', min_val_docs=1, processes=1, progress=False)
    docs, _ = documents(out)
    assert docs == {'First one. Second one.': pytest.approx([0.11, 0.11]), 'Third.': pytest.approx([0.06]),
                    'Fourth! Fifth?': pytest.approx([0.08, 0.06])}
    assert s['skipped'] == {'invalid JSON': 1, "no 'text' or 'texts'": 1}
    assert s['scorer'] == 'length'


def paper_records():
    """Records in the schema of the paper's datasets (reference §2), scores as released."""
    pep8 = [{'org_text': 'x=1\ny = 2\n', 'texts': ['x=1\n', 'y = 2\n'], 'scores': [0.5, 0.5], 'num_lines': 2,
             'avg_score': 0.5},
            {'org_text': 'z = 3\n', 'texts': ['z = 3\n'], 'scores': [0.0], 'num_lines': 1, 'avg_score': 0.0},
            {'org_text': 'w = 4\n', 'texts': ['w = 4\n'], 'scores': [0.0, 1.0], 'num_lines': 1, 'avg_score': 0.5}]
    toxicity = [{'texts': ['Hello there. ', 'You idiot.'], 'meta': {'pile_set_name': 'Pile-CC'},
                 'scores': [0.001, 0.9], 'avg_score': 0.4505, 'num_sents': 2},
                {'texts': ['Nice day.'], 'meta': {'pile_set_name': 'Pile-CC'}, 'scores': [0.0002],
                 'avg_score': 0.0002, 'num_sents': 1}]
    return pep8, toxicity


def test_hub_path_keeps_or_rescores_the_papers_scores(tmp_path, monkeypatch, hub_cache):
    """The default source (the hub) read from the hub client's cache, offline (see test_hub.py)."""
    monkeypatch.chdir(tmp_path)
    pep8, _ = paper_records()
    repo = prepare.get_task('pep8').hf_dataset
    hub_cache(repo, 'data/train-00000-of-00001.jsonl.gz',
              gzip.compress(''.join(json.dumps(r) + '\n' for r in pep8).encode()))
    hub_cache(repo, 'README.md', b'# card\n')
    s = prepare.prepare('pep8', '', 'out', min_val_docs=1, processes=1, progress=False)
    docs, _ = documents('out')
    assert docs == {'x=1\ny = 2\n': [0.5, 0.5], 'z = 3\n': [0.0]}  # the dataset's scores, kept
    assert s['skipped'] == {'scores do not match texts': 1} and s['scorer'] == 'dataset'
    assert s['source'] == 'hf:kejian/codeparrot-train-more-filter-3.3b-cleaned'
    doc_scores = sorted(np.concatenate([PreparedData(f'out/{k}').doc_scores for k in ('train', 'val')]).tolist())
    assert doc_scores == [0.0, 0.5]  # avg_score as released

    s = prepare.prepare('pep8', '', 'out', rescore=True, min_val_docs=1, processes=1, progress=False)
    docs, _ = documents('out')
    assert docs == {'x=1\ny = 2\n': [0.25, 0.0], 'z = 3\n': [0.0], 'w = 4\n': [0.0]}  # pycodestyle's, per line
    assert s['scorer'] == 'pep8'


def test_jsonl_in_the_papers_schema(tmp_path):
    _, toxicity = paper_records()
    path = tmp_path / 'pile.jsonl'
    path.write_text(''.join(json.dumps(r) + '\n' for r in toxicity))
    out = str(tmp_path / 'out')
    prepare.prepare('toxicity', str(path), out, min_val_docs=1, processes=1, progress=False)
    docs, _ = documents(out)
    assert docs == {'Hello there. You idiot.': [np.float32(0.001), np.float32(0.9)], 'Nice day.': [np.float32(2e-4)]}


def run_cli(*args, cwd, timeout=None):
    return subprocess.run([sys.executable, os.path.abspath(prepare.__file__), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def test_cli_bad_input_is_one_line(tmp_path, pep8_folder):
    empty = tmp_path / 'empty'
    empty.mkdir()
    binary = tmp_path / 'binary'
    write(f'{binary}/x.py', b'\x00\x00')
    cases = {('nope',): "unknown task 'nope'",
             ('pep8', '--source=/no/such/path'): '/no/such/path: no such file or directory',
             ('pep8', f'--source={empty}'): 'no .py files and no data files (.jsonl, .jsonl.gz, .json, .json.gz, '
                                            '.parquet); the corpus is empty',
             ('pep8', f'--source={binary}'): 'no usable documents in 1 inputs (1 binary)',
             ('pep8', f'--source={pep8_folder}', '--scorer=nope'): "unknown scorer 'nope'",
             ('toxicity', '--source=local'): 'toxicity: no --source=local corpus here',
             ('pep8', f'--source={pep8_folder}', '--min_val_docs=5'): 'none left for train'}
    for args, message in cases.items():
        r = run_cli(*args, '--out_dir=out', cwd=tmp_path)
        assert r.returncode == 1 and r.stdout == '', args
        assert r.stderr.count('\n') == 1 and r.stderr.startswith('error: ') and message in r.stderr, r.stderr
        assert not [n for n in os.listdir(tmp_path) if n.startswith('out')]  # nothing written, nothing staged
    r = run_cli('pep8', f'--source={pep8_folder}', '--min_val_docs=1', '--out_dir=out', cwd=tmp_path)
    assert r.returncode == 0 and 'pep8: 3 documents' in r.stdout, r.stderr
    write(f'{tmp_path}/mine/notes.txt', 'keep me')
    r = run_cli('pep8', f'--source={pep8_folder}', '--out_dir=mine', cwd=tmp_path)
    assert r.returncode == 1 and "holds 'notes.txt', not prepare.py output" in r.stderr


def test_interrupted_run_leaves_no_complete_looking_dataset(pep8_folder, tmp_path, monkeypatch):
    out = str(tmp_path / 'out')
    first = prepare.prepare('pep8', pep8_folder, out, min_val_docs=1, processes=1, progress=False)

    calls = []

    def interrupted(*item):
        calls.append(item)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return process_item(*item)
    process_item = prepare.process_item
    monkeypatch.setattr(prepare, 'process_item', interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare.prepare('pep8', pep8_folder, out, min_val_docs=1, processes=1, progress=False)
    assert sorted(os.listdir(tmp_path)) == ['code', 'out']  # staging removed; the previous dataset is untouched
    with open(os.path.join(out, 'summary.json')) as f:
        assert json.load(f)['seconds'] == first['seconds']
    monkeypatch.undo()

    # a killed run (no cleanup): its staging folder never looks like a dataset, and the next run removes it
    dead = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'], capture_output=True, text=True)
    fresh = str(tmp_path / 'fresh')
    left = f'{fresh}.tmp-{int(dead.stdout)}/train.tmp-{int(dead.stdout)}'
    write(f'{left}/tokens.bin', b'\0' * 64)
    with pytest.raises(DataError, match='not found'):
        PreparedData(os.path.join(fresh, 'train'))
    prepare.prepare('pep8', pep8_folder, fresh, min_val_docs=1, processes=1, progress=False)
    assert sorted(os.listdir(tmp_path)) == ['code', 'fresh', 'out']
    assert PreparedData(os.path.join(fresh, 'train')).n_documents >= 1


def test_local_text_falls_back_to_the_installed_packages_docs(tmp_path, monkeypatch):
    site_dir = tmp_path / 'site-packages'
    write(f'{site_dir}/pkg-1.0.dist-info/METADATA', 'Name: pkg\nAuthor-email: Jane Roe <jane@example.org>\n')
    write(f'{site_dir}/pkg/LICENSE.txt', 'Copyright 2020 Jane Roe. Write to jane@example.org now.\n')
    write(f'{site_dir}/pkg/README.md', 'A package. See https://example.org for more.\n')
    write(f'{site_dir}/pkg/README.py', 'x = 1\n')  # code, not documentation
    write(f'{site_dir}/pkg/data.txt', 'not a doc file\n')
    monkeypatch.setattr(sources, 'site_dirs', lambda: [str(site_dir)])
    debian = tmp_path / 'doc'
    monkeypatch.setattr(sources, 'DEBIAN_DOCS', str(debian))  # no such folder: the fallback
    task = prepare.get_task('pii')
    roots = sources.local_roots(task, 'local')
    assert [(r, prefix) for r, prefix, _ in roots] == [(str(site_dir), 'site/')]
    keys = sorted(key for _, key, _ in sources.corpus_files(task, roots))
    assert keys == ['site/pkg-1.0.dist-info/METADATA', 'site/pkg/LICENSE.txt', 'site/pkg/README.md']
    summary = prepare.prepare('pii', 'local', str(tmp_path / 'out'), min_val_docs=1, processes=1, progress=False)
    assert summary['source'] == f'local ({site_dir})' and sum(summary['documents'].values()) == 3
    # with Debian's docs present they are the corpus, and 'local+site' adds the packages'
    write(f'{debian}/tool/copyright', 'Copyright 1999 John Doe <john@example.com>\n')
    write(f'{debian}/tool/README', 'not taken from here\n')
    assert [r[0] for r in sources.local_roots(task, 'local')] == [str(debian)]
    assert [r[0] for r in sources.local_roots(task, 'local+site')] == [str(debian), str(site_dir)]
    keys = sorted(key for _, key, _ in sources.corpus_files(task, sources.local_roots(task, 'local+site')))
    assert keys == ['site/pkg-1.0.dist-info/METADATA', 'site/pkg/LICENSE.txt', 'site/pkg/README.md',
                    'tool/copyright']
