"""repro.py end to end on a tiny model and dataset (all six methods), and bench.py's CPU mode."""
import json
import math
import os

import bench
import repro
from conftest import ROOT_DIR


def test_repro_all_methods(tiny_data, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT_DIR)
    results = str(tmp_path / 'results')
    tiny = ('--n_layer=1 --n_head=1 --n_embd=16 --block_size=32 --batch_size=2 --total_batch_size=2 '
            '--max_tokens=256 --eval_iters=1 --eval_batch_size=2 --eval_samples=4 --eval_max_new_tokens=8 '
            '--kl_samples=4 --log_interval=2')
    repro.main(['pep8', '--methods=all', f'--data_dir={tiny_data}', f'--results={results}', f'--extra={tiny}'])
    summary = json.load(open(os.path.join(results, 'results.json')))
    assert list(summary['runs']) == ['mle', 'filter', 'cond', 'ul', 'awr', 'rwr']
    for method, row in summary['runs'].items():
        assert row['method'] == method and row['val_loss'] > 0 and 'unconditional/score' in row
        # the MLE model is the KL reference: its KL from itself is 0; the others' is an estimate from 4 samples
        assert abs(row['kl']) < 1e-4 if method == 'mle' else math.isfinite(row['kl']) and row['kl'] != 0
    table = open(os.path.join(results, 'results.md')).read()
    assert table.count('\n| ') == 7  # header and six methods
    for name in ('plot_score_vs_tokens.png', 'plot_pareto.png'):
        assert os.path.getsize(os.path.join(results, name)) > 1000


def test_bench_small(capsys, monkeypatch):
    monkeypatch.chdir(ROOT_DIR)
    bench.main(['--small'])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith('{')]
    kinds = {(r['bench'], r.get('impl'), r.get('objective')) for r in rows}
    for objective in ('mle', 'cond', 'ul', 'awr'):
        assert ('train', 'phf', objective) in kinds
    assert ('train', 'hf_gpt2', 'mle') in kinds and ('sample', 'hf_generate', None) in kinds
    assert all(r['tokens_per_s'] > 0 for r in rows if 'tokens_per_s' in r)
    assert {r['name'] for r in rows if r['bench'] == 'scorer'} == {'pep8', 'pii'}


def test_every_size_is_a_valid_training_config(monkeypatch):
    import train
    monkeypatch.chdir(ROOT_DIR)
    for size in repro.SIZES.values():
        for method in repro.METHODS:
            cfg = train.load_config([f'config/pep8_{method}.py'] + size['train'])
            assert cfg.method == method and cfg.total_batch_size % cfg.batch_size == 0
