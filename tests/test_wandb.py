"""wandb_project: a real wandb run in offline mode (config, training curve, evaluation metrics, sample tables, the same
run continued on resume), and without wandb installed a warning and nothing else changed."""
import glob
import json
import os
import sys

import pytest
import torch
import wandb

import train
from conftest import tiny_args


def run_with_wandb(monkeypatch, argv):
    """train.py's run in-process, WANDB_MODE=offline; (the arguments of each wandb.init, each dict run.log got)."""
    monkeypatch.setenv('WANDB_MODE', 'offline')
    monkeypatch.setenv('WANDB_SILENT', 'true')
    inits, logged, real_init = [], [], wandb.init

    def init(**kw):
        inits.append(kw)
        run = real_init(**kw)
        real_log = run.log
        monkeypatch.setattr(run, 'log', lambda d, **k: logged.append(d) or real_log(d, **k))
        return run

    monkeypatch.setattr(wandb, 'init', init)
    train.train(train.load_config(argv))
    return inits, logged


def test_wandb_offline_logs_config_curve_and_sample_tables(tiny_data, tmp_path, monkeypatch):
    out = str(tmp_path / 'run')
    argv = tiny_args(tiny_data, out, method='cond', wandb_project='phf-test', max_tokens=2 * 4 * 32, eval_samples=3,
                     eval_iters=1, eval_max_new_tokens=4, eval_scenarios='unconditional')
    inits, logged = run_with_wandb(monkeypatch, argv)
    assert len(inits) == 1 and inits[0]['project'] == 'phf-test' and inits[0]['dir'] == out
    assert inits[0]['config']['method'] == 'cond' and inits[0]['config']['max_tokens'] == 256
    curve = [d for d in logged if 'loss' in d]
    assert [d['step'] for d in curve] == [1, 2] and [d['tokens'] for d in curve] == [128, 256]
    assert all(type(v) in (int, float) for d in curve for v in d.values())  # mfu None on CPU: left out
    (evaluation,) = [d for d in logged if 'unconditional/current_samples' in d]
    assert evaluation['step'] == 2 and 'val_loss' in evaluation and 'unconditional/score' in evaluation
    table = evaluation['unconditional/current_samples']
    assert table.columns == ['prompt', 'continuation', 'score'] and len(table.data) == 3
    with open(os.path.join(out, 'eval_step2.json')) as f:
        saved = json.load(f)['samples']['unconditional']
    assert table.data == [[s['prompt'], s['text'], s['score']] for s in saved]
    (run_dir,) = glob.glob(os.path.join(out, 'wandb', 'offline-run-*'))  # the offline run, for `wandb sync`
    (written,) = glob.glob(os.path.join(run_dir, 'files', 'media', 'table', 'unconditional', 'current_samples_*.json'))
    with open(written) as f:
        assert json.load(f)['data'] == table.data
    # a resumed run continues the same wandb run: its id is in the checkpoint
    run_id = torch.load(os.path.join(out, 'ckpt.pt'), map_location='cpu', weights_only=True)['wandb_run_id']
    assert run_id == run_dir.rsplit('-', 1)[1]
    inits, logged = run_with_wandb(monkeypatch, argv + ['--resume=True', '--max_tokens=384'])
    assert inits[0]['id'] == run_id and [d['step'] for d in logged if 'loss' in d] == [3]


def test_without_wandb_installed_a_warning_and_nothing_else(tiny_data, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, 'wandb', None)  # `import wandb` raises ImportError
    out = str(tmp_path / 'run')
    train.train(train.load_config(tiny_args(tiny_data, out, wandb_project='phf-test', max_tokens=2 * 4 * 32)))
    err = capsys.readouterr().err
    assert 'warning: wandb_project is set but wandb is not installed (pip install wandb)' in err
    with open(os.path.join(out, 'log.jsonl')) as f:
        assert [json.loads(line)['step'] for line in f] == [1, 2]
    assert not os.path.exists(os.path.join(out, 'wandb'))
    ckpt = torch.load(os.path.join(out, 'ckpt.pt'), map_location='cpu', weights_only=True)
    assert ckpt['step'] == 2 and ckpt['wandb_run_id'] is None


def test_wandb_that_cannot_start_stops_the_run_before_its_first_step(tiny_data, tmp_path, monkeypatch):
    def init(**kw):
        raise wandb.errors.UsageError('api_key not configured (no-tty)')

    monkeypatch.setattr(wandb, 'init', init)
    out = str(tmp_path / 'run')
    with pytest.raises(train.TrainingError, match=r'wandb_project=phf-test: wandb did not start \(api_key not '
                                                  r'configured \(no-tty\)\); run `wandb login`, or set WANDB_MODE'):
        train.train(train.load_config(tiny_args(tiny_data, out, wandb_project='phf-test')))
    assert not os.path.exists(os.path.join(out, 'ckpt.pt'))
