"""The on-disk format, the filtering and conditional transforms, and the batch order."""
import json
import os

import numpy as np
import pytest

import data
import tokenizer
import transforms
from tokenizer import bpe_path, decode, get_tokenizer


def write_two_docs(path):
    with data.DatasetWriter(path, task='pep8', split='train') as w:
        w.add_document([[1, 2, 3], [4, 5]], [0.0, 0.5])
        w.add_document([[6], [7, 8, 9], [], [10]], [0.1, 0.0, 0.9, 0.2])  # the empty segment is dropped
    return data.PreparedData(path)


def test_format_round_trip(tmp_path):
    d = write_two_docs(str(tmp_path / 'train'))
    assert d.tokens.tolist() == [50256, 1, 2, 3, 4, 5, 50256, 6, 7, 8, 9, 10]
    assert d.seg_starts.tolist() == [0, 4, 6, 8, 11]
    assert d.seg_scores.tolist() == pytest.approx([0.0, 0.5, 0.1, 0.0, 0.2])
    assert d.doc_starts.tolist() == [0, 2]
    assert d.doc_scores.tolist() == pytest.approx([0.25, 0.1])  # unweighted means of the kept segments
    assert d.token_scores(0, 12).tolist() == pytest.approx([0, 0, 0, 0, .5, .5, .1, .1, 0, 0, 0, .2])
    assert d.token_scores(5, 9).tolist() == pytest.approx([.5, .1, .1, 0])
    assert isinstance(d.tokens, np.memmap)
    toks, scores = d.document(1)
    assert toks.tolist() == [50256, 6, 7, 8, 9, 10] and scores.tolist() == pytest.approx([.1, .1, 0, 0, 0, .2])
    assert not [n for n in os.listdir(tmp_path) if '.tmp' in n]


def test_control_tokens(tmp_path):
    src = write_two_docs(str(tmp_path / 'train'))
    d = transforms.add_control_tokens(src, str(tmp_path / 'cond'), threshold=0.0, drop_fraction=0.0, seed=0)
    A, M, E = data.ALIGNED, data.MISALIGNED, data.EOS
    assert d.tokens.tolist() == [E, A, 1, 2, 3, M, 4, 5, E, M, 6, A, 7, 8, 9, M, 10]
    # each control token carries its segment's score
    assert d.token_scores(0, 17).tolist() == pytest.approx([0, 0, 0, 0, 0, .5, .5, .5, .1, .1, .1, 0, 0, 0, 0,
                                                           .2, .2])
    all_dropped = transforms.add_control_tokens(src, str(tmp_path / 'none'), 0.0, drop_fraction=1.0, seed=0)
    assert all_dropped.tokens.tolist() == src.tokens.tolist()


def test_grade_edges_by_hand():
    scores = [0.0, 0.0, 0.1, 0.2, 0.3, 0.4]
    assert transforms.grade_edges(scores, 0.0, 2) == [0.0]  # the paper's two tokens: the threshold alone
    assert transforms.grade_edges(scores, 0.0, 3) == pytest.approx([0.0, 0.25])  # the median of .1 .2 .3 .4
    # quartiles of .1 .2 .3 .4 (linear interpolation at positions 0.75, 1.5, 2.25)
    assert transforms.grade_edges(scores, 0.0, 5) == pytest.approx([0.0, 0.175, 0.25, 0.325])
    assert transforms.grade_edges(scores, 0.3, 3) == pytest.approx([0.3, 0.4])
    with pytest.raises(data.DataError, match='no segment scores above the threshold 0.4'):
        transforms.grade_edges(scores, 0.4, 3)
    assert [transforms.bin_of(s, [0.0, 0.25]) for s in (0.0, 0.1, 0.25, 0.26)] == [0, 1, 1, 2]  # edges inclusive


def test_graded_control_tokens(tmp_path):
    assert data.control_tokens(2) == (data.ALIGNED, data.MISALIGNED)
    assert data.control_tokens(5) == (data.ALIGNED, 50283, 50284, 50285, data.MISALIGNED)
    src = write_two_docs(str(tmp_path / 'train'))  # segment scores 0, .5 | .1, 0, .2
    d = transforms.add_control_tokens(src, str(tmp_path / 'k3'), 0.0, drop_fraction=0.0, seed=0, bins=3)
    A, G, M, E = data.ALIGNED, data.GRADE_IDS[0], data.MISALIGNED, data.EOS
    # edges [0, .2] (the median of .5 .1 .2): .1 and .2 (the edge itself) in the middle bin, .5 in the worst
    assert d.tokens.tolist() == [E, A, 1, 2, 3, M, 4, 5, E, G, 6, A, 7, 8, 9, G, 10]
    assert d.header['vocab_size'] == 50284 and d.header['transform']['edges'] == pytest.approx([0.0, 0.2])
    assert decode([G, 1, M]) == decode([1])
    k2 = transforms.add_control_tokens(src, str(tmp_path / 'k2'), 0.0, drop_fraction=0.0, seed=0, bins=2)
    assert 'edges' not in k2.header['transform'] and k2.header['vocab_size'] == data.VOCAB_SIZE


def test_control_token_drop_is_seeded(tmp_path):
    root = str(tmp_path)
    with data.DatasetWriter(f"{root}/train", task='pep8', split='train') as w:
        for i in range(200):
            w.add_document([[i % 50 + 1]] * 5, [0.0] * 5)
    src = data.PreparedData(f"{root}/train")
    a = transforms.add_control_tokens(src, f"{root}/a", 0.0, 0.1, seed=1)
    b = transforms.add_control_tokens(src, f"{root}/b", 0.0, 0.1, seed=1)
    c = transforms.add_control_tokens(src, f"{root}/c", 0.0, 0.1, seed=2)
    assert a.tokens.tolist() == b.tokens.tolist() != c.tokens.tolist()
    n_controls = int((np.asarray(a.tokens) == data.ALIGNED).sum())
    assert 850 < n_controls < 950  # ~90% of the 1000 segments


def test_filter(tmp_path):
    src = write_two_docs(str(tmp_path / 'train'))
    d = transforms.filter_documents(src, str(tmp_path / 'f'), threshold=0.2)
    assert d.tokens.tolist() == [50256, 6, 7, 8, 9, 10] and d.seg_starts.tolist() == [0, 2, 5]
    assert d.doc_scores.tolist() == pytest.approx([0.1])
    assert d.header['transform'] == {'kind': 'filter', 'threshold': 0.2}
    assert transforms.filter_documents(src, str(tmp_path / 'g'), threshold=0.1).n_documents == 1  # equality keeps
    with pytest.raises(data.DataError, match=r"filtering at 0.09 keeps none of its 2 documents \(its lowest "
                                             r"document score is 0.1\); raise --filter_threshold"):
        transforms.filter_documents(src, str(tmp_path / 'h'), threshold=0.09)
    assert not os.path.exists(tmp_path / 'h')


def test_for_method_caches_and_rebuilds(tmp_path, tiny_data):
    split = os.path.join(tiny_data, 'pep8', 'train')
    a = transforms.for_method(split, 'cond', cond_threshold=0.0, drop_token_fraction=0.1, seed=3)
    assert a.path.endswith('train.cond-0-0.1-3') and a.n_tokens > data.PreparedData(split).n_tokens
    mtime = os.path.getmtime(os.path.join(a.path, 'tokens.bin'))
    b = transforms.for_method(split, 'cond', cond_threshold=0.0, drop_token_fraction=0.1, seed=3)
    assert os.path.getmtime(os.path.join(b.path, 'tokens.bin')) == mtime
    assert transforms.for_method(split, 'ul').path == split


def test_corrupt_and_mismatched_files(tmp_path):
    path = str(tmp_path / 'train')
    write_two_docs(path)
    with open(os.path.join(path, 'tokens.bin'), 'r+b') as f:
        f.truncate(10)
    with pytest.raises(data.DataError, match=r'tokens.bin: 10 bytes, header says 24.*re-run prepare.py'):
        data.PreparedData(path)
    write_two_docs(path)
    header = json.load(open(os.path.join(path, 'header.json')))
    json.dump(dict(header, version=99), open(os.path.join(path, 'header.json'), 'w'))
    with pytest.raises(data.DataError, match='version 99'):
        data.PreparedData(path)
    json.dump(dict(header, tokenizer='codeparrot'), open(os.path.join(path, 'header.json'), 'w'))
    with pytest.raises(data.DataError, match='codeparrot'):
        data.PreparedData(path)
    open(os.path.join(path, 'header.json'), 'w').write('{not json')
    with pytest.raises(data.DataError, match='corrupt header'):
        data.PreparedData(path)
    with pytest.raises(data.DataError, match=r'not found; run `python prepare.py TASK`'):
        data.PreparedData(str(tmp_path / 'missing'))
    with pytest.raises(data.DataError, match=rf'not found; run `python prepare.py pii --out_dir={tmp_path}/pii`'):
        data.PreparedData(str(tmp_path / 'pii' / 'val'))
    assert data.prepare_command('data/pii') == data.prepare_command('data/pii/') == 'python prepare.py pii'
    with pytest.raises(data.DataError, match='unknown task'):
        data.get_task('sentiment')


def test_corrupt_offsets_are_named(tmp_path):
    path = str(tmp_path / 'train')
    for name, offsets, entry in (('seg_starts', [1, 4, 6, 8, 11], 'entry 0 is 1'),
                                 ('seg_starts', [0, 4, 3, 8, 11], 'entry 2 is 3'),
                                 ('seg_starts', [0, 4, 6, 8, 12], 'entry 4 is 12; .* below 12'),
                                 ('doc_starts', [0, 5], 'entry 1 is 5; .* below 5')):
        write_two_docs(path)  # 12 tokens, 5 segments; seg_starts [0, 4, 6, 8, 11], doc_starts [0, 2]
        np.array(offsets, dtype=np.uint32).tofile(os.path.join(path, name + '.bin'))
        with pytest.raises(data.DataError, match=f"{path}/{name}.bin: {entry}.*the file is corrupt, re-run"):
            data.PreparedData(path)
    d = write_two_docs(path)
    d.check_offsets(chunk=2)  # the last segment may start at the last token
    d.seg_starts = np.array([0, 4, 3, 8, 11], dtype=np.uint32)  # the decrease straddles two chunks
    with pytest.raises(data.DataError, match='entry 2 is 3'):
        d.check_offsets(chunk=2)


def test_header_that_is_json_but_wrong(tmp_path):
    path = str(tmp_path / 'train')
    write_two_docs(path)
    hp = os.path.join(path, 'header.json')
    header = json.load(open(hp))
    without_documents = {k: v for k, v in header.items() if k != 'n_documents'}
    for content, error in ((None, 'null is not a header'), (dict(header, n_tokens=None), 'n_tokens is None'),
                           (without_documents, 'n_documents is missing'),
                           (dict(header, n_segments=-1), 'n_segments is -1'),
                           (dict(header, vocab_size='50283'), "vocab_size is '50283'")):
        json.dump(content, open(hp, 'w'))
        with pytest.raises(data.DataError, match=f"{hp}: {error}.*re-run prepare.py"):
            data.PreparedData(path)


def test_token_outside_the_vocabulary_is_named(tmp_path):
    path = str(tmp_path / 'train')
    write_two_docs(path)
    tokens = np.fromfile(os.path.join(path, 'tokens.bin'), dtype=np.uint16)
    tokens[9] = 60000
    tokens.tofile(os.path.join(path, 'tokens.bin'))
    loader = data.BlockLoader(data.PreparedData(path), block_size=4, batch_size=1)
    assert loader.batch([0])[0].tolist() == [[50256, 1, 2, 3]]
    with pytest.raises(data.DataError, match=f"{path}/tokens.bin: token id 60000 in tokens 8-12 is outside the "
                                             f"vocabulary of 50283; the file is corrupt, re-run prepare.py"):
        loader.batch([2])


def test_interrupted_writer_leaves_nothing(tmp_path):
    path = str(tmp_path / 'train')
    with pytest.raises(KeyboardInterrupt):
        with data.DatasetWriter(path, task='pep8', split='train') as w:
            w.add_document([[1, 2]], [0.0])
            raise KeyboardInterrupt
    assert os.listdir(tmp_path) == []
    with pytest.raises(data.DataError, match='no documents'):
        with data.DatasetWriter(path, task='pep8', split='train'):
            pass


def test_leftovers_of_dead_writers_are_removed(tmp_path, capsys):
    """One sweeper for what killed writers leave: NAME.tmp-PID (a split, a checkpoint, prepare.py's staging) and
    NAME.old-PID (the output prepare.py was replacing), only where that process is gone and NAME has the prefix."""
    import subprocess
    import sys
    dead = int(subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'], capture_output=True,
                              text=True).stdout)
    live = os.getpid()
    names = [f'pii.tmp-{dead}', f'pii.old-{dead}', f'pii.tmp-{live}', f'pep8.tmp-{dead}', 'pii', 'pii.parts',
             f'pii.tmp-x{dead}']
    for name in names:
        os.makedirs(tmp_path / name)
    (tmp_path / f'pii.cond.tmp-{dead}').write_text('x')  # a file
    data.remove_leftovers(str(tmp_path), 'pii.')
    assert sorted(os.listdir(tmp_path)) == sorted(['pii', 'pii.parts', f'pii.tmp-{live}', f'pep8.tmp-{dead}',
                                                  f'pii.tmp-x{dead}'])
    assert capsys.readouterr().err.count('left by an interrupted run') == 3


def test_block_order_is_a_seeded_permutation(tiny_data):
    d = data.PreparedData(os.path.join(tiny_data, 'pep8', 'train'))
    loader = data.BlockLoader(d, block_size=8, batch_size=4, seed=5)
    n = loader.n_blocks
    assert n == (d.n_tokens - 1) // 8
    per_epoch = n // 4
    seen = np.concatenate([loader.blocks_of(g) for g in range(per_epoch)])
    assert len(set(seen.tolist())) == len(seen)  # no replacement within an epoch
    again = data.BlockLoader(d, block_size=8, batch_size=4, seed=5)
    assert again.blocks_of(3).tolist() == loader.blocks_of(3).tolist()
    assert data.BlockLoader(d, 8, 4, seed=6).blocks_of(0).tolist() != loader.blocks_of(0).tolist()
    skipped = data.BlockLoader(d, 8, 4, seed=5, offset=8)
    assert skipped.blocks_of(0).tolist() == loader.blocks_of(2).tolist()


def test_batch_targets_and_rewards(tmp_path):
    d = write_two_docs(str(tmp_path / 'train'))
    loader = data.BlockLoader(d, block_size=4, batch_size=1)
    x, y, r = loader.batch([1])  # tokens 4..8 -> inputs 4..7, targets 5..8
    assert x.tolist() == [[4, 5, 50256, 6]] and y.tolist() == [[5, 50256, 6, 7]]
    assert r.tolist()[0] == pytest.approx([-0.5, -0.1, -0.1, -0.0])  # reward of each target's segment


def test_tokenizer_is_gpt2_with_control_tokens():
    enc = get_tokenizer()
    assert enc.encode('Hello world') == [15496, 995]
    assert enc.encode('The quick brown fox jumps over the lazy dog.') == [464, 2068, 7586, 21831, 18045, 625, 262,
                                                                          16931, 3290, 13]
    assert enc.encode('<|endoftext|><|aligned|><|misaligned|>', allowed_special='all') == [50256, 50257, 50258]
    assert enc.encode_ordinary('<|aligned|>') != [50257]  # text never turns into a control token


def test_tokenizer_has_one_token_per_run_of_spaces():
    enc = get_tokenizer()
    assert enc.encode(' ') == [220] and enc.encode('  ') == [50259] and enc.encode(' ' * 25) == [50282]
    # "\n" + 7 spaces, then " return" takes the eighth space (GPT-2's pre-tokenizer), as 8 + 1 tokens in GPT-2
    assert enc.encode('\n        return x\n') == [198, 50264, 1441, 2124, 198]
    assert enc.encode(' ' * 30) == [50273, 50271]  # 16 + 14: BPE merges a longer run pairwise, into a few tokens
    code = 'def f(a,  b):\n    if a:\n\t\treturn  [b]\n' + ' ' * 60 + '# end\n'
    assert enc.decode(enc.encode(code)) == code
    assert max(enc.encode(code)) < data.VOCAB_SIZE
    # special tokens are dropped from a sample's text, space runs are not
    assert decode([50256, 50257, 50261, 87, 50258, 198]) == '    x\n'


def test_tokenizer_errors_say_what_to_do(tmp_path, monkeypatch):
    import tiktoken

    def offline(name):
        raise ConnectionError('no network')

    monkeypatch.setattr(tiktoken, 'get_encoding', offline)
    monkeypatch.setattr(tokenizer, '_tokenizer', None)
    monkeypatch.setenv('PHF_GPT2_BPE', str(tmp_path / 'missing.tiktoken'))
    with pytest.raises(data.DataError, match='python tokenizer.py fetch'):
        get_tokenizer()
    (tmp_path / 'bad.tiktoken').write_text('aGVsbG8= 0\n')
    monkeypatch.setenv('PHF_GPT2_BPE', str(tmp_path / 'bad.tiktoken'))
    with pytest.raises(data.DataError, match='sha256 mismatch'):
        get_tokenizer()


def test_a_bpe_file_named_by_the_environment_is_used_without_a_download(tmp_path, monkeypatch):
    import shutil
    import tiktoken
    if not os.path.exists(bpe_path()):
        pytest.skip('no local GPT-2 BPE (python tokenizer.py fetch)')
    shutil.copy(bpe_path(), tmp_path / 'gpt2.tiktoken')
    monkeypatch.setattr(tiktoken, 'get_encoding', lambda name: pytest.fail('a download was tried'))
    monkeypatch.setattr(tokenizer, '_tokenizer', None)
    monkeypatch.setenv('PHF_GPT2_BPE', str(tmp_path / 'gpt2.tiktoken'))
    assert get_tokenizer().encode_ordinary('Hello world') == [15496, 995]
