"""The training loop: config checking, resuming after SIGKILL, DDP equivalence, NaN stop, finetuning."""
import json
import os
import signal
import subprocess
import sys
from contextlib import nullcontext
from dataclasses import fields

import numpy as np
import pytest
import torch

import checkpoints
import data
import devices
import train
from conftest import start_training, tiny_args
from data import METHODS
from model import GPT, GPTConfig
from settings import TrainConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def losses(out_dir):
    """The logged loss of every step."""
    by_step = {}
    for line in open(os.path.join(out_dir, 'log.jsonl')):
        record = json.loads(line)
        if 'loss' in record:
            by_step[record['step']] = record['loss']
    return by_step


def run(argv):
    return train.train(train.load_config(argv))


def test_config_errors(tmp_path, capsys):
    bad = tmp_path / 'bad.py'
    bad.write_text("learning_rate = 1e-3\nlearnig_rate = 1e-4\n")
    with pytest.raises(train.ConfigError, match=r"bad.py: unknown key 'learnig_rate'"):
        train.load_config([str(bad)])
    with pytest.raises(train.ConfigError, match=r"unknown key 'bacth_size'"):
        train.load_config(['--bacth_size=4'])
    with pytest.raises(train.ConfigError, match=r"batch_size must be int, got 'four'"):
        train.load_config(['--batch_size=four'])
    with pytest.raises(train.ConfigError, match="method 'dpo'"):
        train.load_config(['--method=dpo'])
    with pytest.raises(train.ConfigError, match='config file not found'):
        train.load_config(['config/nope.py'])
    with pytest.raises(SystemExit):
        train.main(['--task=sentiment'])
    assert capsys.readouterr().err.strip() == "error: task 'sentiment': choose one of toxicity, pii, pep8"


def test_help_lists_every_setting(capsys):
    for flag in ('--help', '-h'):
        train.main(['config/pep8_cond.py', flag])  # prints, trains nothing
        out = capsys.readouterr().out
        assert out.startswith(train.__doc__.strip()) and '\nlearning_rate: float = 5e-4\n' in out
        assert [line.split(':')[0] for line in out.split('defaults:\n\n')[1].splitlines()
                if not line.startswith('#')] == [f.name for f in fields(TrainConfig)]
    import evaluate
    with pytest.raises(SystemExit) as e:
        evaluate.main(['--help'])
    assert e.value.code is None and capsys.readouterr().out.strip() == evaluate.__doc__.strip()
    with pytest.raises(SystemExit) as e:
        evaluate.main([])  # no --ckpt: the usage as an error
    assert e.value.code == evaluate.__doc__


def test_config_defaults_come_from_the_task_table():
    cfg = train.load_config(['--task=toxicity', '--learning_rate=1'])
    assert (cfg.cond_threshold, cfg.filter_threshold, cfg.ul_threshold, cfg.ul_soft) == (0.00056, 0.00078, 0.00078,
                                                                                         False)
    assert cfg.learning_rate == 1.0 and isinstance(cfg.learning_rate, float)
    cfg = train.load_config(['--task=pep8', '--ul_soft=False', '--filter_threshold=0.01'])
    assert (cfg.ul_soft, cfg.filter_threshold, cfg.drop_token_fraction) == (False, 0.01, 0.1)


def test_every_config_file_loads():
    names = sorted(os.listdir(os.path.join(ROOT, 'config')))
    for task in ('toxicity', 'pii', 'pep8'):
        for method in METHODS:
            assert f"{task}_{method}.py" in names
    for name in names:
        cfg = train.load_config([os.path.join(ROOT, 'config', name)])
        assert cfg.max_tokens > 0


@pytest.mark.parametrize('method', ['mle', 'filter', 'cond', 'ul', 'awr', 'rwr', 'mask'])
def test_each_method_trains(tiny_data, tmp_path, method):
    out = str(tmp_path / method)
    run(tiny_args(tiny_data, out, method=method, filter_threshold=0.05, max_tokens=4 * 4 * 32))
    ckpt = torch.load(os.path.join(out, 'ckpt.pt'), map_location='cpu', weights_only=True)
    assert ckpt['step'] == 4 and ckpt['config']['method'] == method
    assert not any(k.startswith('_orig_mod') for k in ckpt['model'])
    assert ('value_head.weight' in ckpt['model']) == (method in ('awr', 'rwr'))
    if method == 'rwr':  # alpha = 1: the value head never trains (reference §1.5)
        assert ckpt['model']['value_head.weight'].abs().sum().item() == 0.0
    assert len(losses(out)) == 4


def test_auto_dtype_is_bf16_on_a_cpu_with_native_bf16(monkeypatch):
    for native, dtype in ((True, 'bfloat16'), (False, 'float32')):
        monkeypatch.setattr(devices, 'cpu_has_native_bf16', lambda: native)
        cfg = train.load_config(['--device=cpu'])
        assert cfg.dtype == 'auto' and devices.default_dtype('cpu') == dtype
        train.resolve_dtype(cfg, 'cpu')
        assert cfg.dtype == dtype
        assert isinstance(train.autocast_context(cfg, 'cpu'), nullcontext) == (dtype == 'float32')
    cfg = train.load_config(['--device=cpu', '--dtype=float32'])
    train.resolve_dtype(cfg, 'cpu')
    assert isinstance(train.autocast_context(cfg, 'cpu'), nullcontext) and cfg.dtype == 'float32'


def test_bf16_training_on_cpu_evaluates_in_fp32(tiny_data, tmp_path):
    """A bf16 run's losses differ from fp32's by bf16 rounding only; its evaluation runs in fp32, so the val_loss it
    logs is the one evaluate.py computes from its checkpoint (in bf16 it would differ, here by 1.4e-5)."""
    import evaluate
    fp32, bf16 = str(tmp_path / 'fp32'), str(tmp_path / 'bf16')
    run(tiny_args(tiny_data, fp32, max_tokens=4 * 4 * 32))
    model = run(tiny_args(tiny_data, bf16, max_tokens=4 * 4 * 32, dtype='bfloat16', eval_iters=2))
    assert losses(bf16) != losses(fp32) and losses(bf16) == pytest.approx(losses(fp32), rel=0.01)
    logged = [json.loads(line) for line in open(os.path.join(bf16, 'eval.jsonl'))][-1]['val_loss']
    split = os.path.join(tiny_data, 'pep8', 'val')
    fp32_loss = evaluate.val_loss(model.eval(), split, 32, 2, 2, 'cpu')['val_loss']
    with torch.autocast('cpu', dtype=torch.bfloat16):
        bf16_loss = evaluate.val_loss(model, split, 32, 2, 2, 'cpu')['val_loss']
    assert logged == pytest.approx(fp32_loss, abs=1e-6) and abs(bf16_loss - fp32_loss) > 1e-5


def test_resume_after_sigkill_continues_exactly(tiny_data, tmp_path):
    args = dict(max_tokens=120 * 4 * 32, ckpt_interval=10, dropout=0.1)
    full = str(tmp_path / 'full')
    run(tiny_args(tiny_data, full, **args))
    killed = str(tmp_path / 'killed')
    proc = start_training(tiny_data, killed, 25, **args)  # it cannot pass step ~70 unread
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    steps_before = max(losses(killed))
    assert 25 <= steps_before < 120
    resumed_from = torch.load(os.path.join(killed, 'ckpt.pt'), weights_only=True)['step']
    assert resumed_from % 10 == 0 and resumed_from <= steps_before
    run(tiny_args(tiny_data, killed, resume=True, **args))
    assert losses(killed) == losses(full)  # bit for bit, step for step
    logged = [json.loads(line)['step'] for line in open(os.path.join(killed, 'log.jsonl'))]
    assert logged == list(range(1, 121))  # each once: the records after the checkpoint were dropped on resume
    a = torch.load(os.path.join(full, 'ckpt.pt'), weights_only=True)['model']
    b = torch.load(os.path.join(killed, 'ckpt.pt'), weights_only=True)['model']
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_ddp_matches_gradient_accumulation(tiny_data, tmp_path):
    single = str(tmp_path / 'single')
    run(tiny_args(tiny_data, single, method='awr', batch_size=2, total_batch_size=4))  # 2 accumulation steps × 2
    ddp = str(tmp_path / 'ddp')
    env = dict(os.environ, OMP_NUM_THREADS='1')
    subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', 'train.py']
                   + tiny_args(tiny_data, ddp, method='awr', batch_size=2, total_batch_size=4),
                   cwd=ROOT, env=env, check=True, capture_output=True)
    for step, loss in losses(single).items():
        assert losses(ddp)[step] == pytest.approx(loss, rel=1e-5)
    a = torch.load(os.path.join(single, 'ckpt.pt'), weights_only=True)['model']
    b = torch.load(os.path.join(ddp, 'ckpt.pt'), weights_only=True)['model']
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)


GROUP_THREADS = """import os, sys
sys.path.insert(0, {root!r})
import torch.distributed as dist
import devices
threads = lambda: len(os.listdir('/proc/self/task'))
alone = threads()
devices.init_process_group('gloo', init_method='file://' + {store!r}, rank=0, world_size=1)
import torch._dynamo  # as an optimizer's constructor does: it imports torch.distributed.nn
joined = threads()
dist.destroy_process_group()
print(alone, joined, threads())
"""


@pytest.mark.skipif(not os.path.isdir('/proc/self/task'), reason='counts threads in /proc')
def test_a_destroyed_group_takes_its_gloo_threads_along(tmp_path):
    """Else they live into the interpreter's exit, where one can abort the process after the run has ended."""
    script = GROUP_THREADS.format(root=ROOT, store=str(tmp_path / 'store'))
    done = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, OMP_NUM_THREADS='1'))
    alone, joined, left = map(int, done.stdout.split())
    assert joined > alone and left == alone, done.stderr


def test_nan_stops_and_keeps_last_good_checkpoint(tiny_data, tmp_path, monkeypatch):
    calls = []
    real_mle = train.objectives.mle

    def mle_that_diverges(logits, targets):
        calls.append(1)
        loss = real_mle(logits, targets)
        return loss * float('nan') if len(calls) > 10 else loss  # step 6 of 2 micro-batches each

    monkeypatch.setattr(train.objectives, 'mle', mle_that_diverges)
    out = str(tmp_path / 'nan')
    with pytest.raises(train.TrainingError, match='non-finite loss at step 6'):
        run(tiny_args(tiny_data, out, log_interval=2, ckpt_interval=4))
    assert torch.load(os.path.join(out, 'ckpt.pt'), weights_only=True)['step'] == 4


def test_checkpoint_save_is_atomic(tmp_path):
    path = str(tmp_path / 'ckpt.pt')
    checkpoints.save_checkpoint(path, {'step': 1})

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError('killed mid-save')

    with pytest.raises(RuntimeError):
        checkpoints.save_checkpoint(path, {'step': 2, 'bad': Unpicklable()})
    assert torch.load(path)['step'] == 1 and os.listdir(tmp_path) == ['ckpt.pt']


def test_finetune_from_mle_checkpoint(tiny_data, tmp_path):
    mle = str(tmp_path / 'mle')
    run(tiny_args(tiny_data, mle, keep_ckpt_steps='2'))
    assert torch.load(os.path.join(mle, 'ckpt_step2.pt'), weights_only=True)['step'] == 2
    src = torch.load(os.path.join(mle, 'ckpt.pt'), weights_only=True)['model']
    for method in ('awr', 'cond'):
        model = run(tiny_args(tiny_data, str(tmp_path / method), method=method, max_tokens=1 * 4 * 32,
                              learning_rate=0.0, init_from=os.path.join(mle, 'ckpt.pt'), skip_tokens=8 * 32))
        wte = model.transformer.wte.weight.detach()
        assert torch.equal(wte[:50257], src['transformer.wte.weight'][:50257])
    # control-token rows re-initialised at the mean of the others (reference §1.3)
    assert (wte[50257:50259] - wte[:50257].mean(0)).abs().max().item() < 0.1


def test_compiled_training_matches_eager(tiny_data, tmp_path):
    eager, compiled = str(tmp_path / 'eager'), str(tmp_path / 'compiled')
    run(tiny_args(tiny_data, eager, max_tokens=3 * 4 * 32))
    run(tiny_args(tiny_data, compiled, max_tokens=3 * 4 * 32, compile=True))
    for step, loss in losses(eager).items():
        assert losses(compiled)[step] == pytest.approx(loss, rel=1e-4)


@pytest.mark.parametrize('method', ['mle', 'ul', 'awr'])
def test_chunked_loss_matches_plain(method):
    """loss_chunk_size > 0: the same loss and gradients from the hidden states as from the model's logits."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=16, n_layer=1, n_head=2, n_embd=16, value_head=method == 'awr'))
    x = torch.randint(0, 50257, (2, 16))
    y = torch.randint(0, 50257, (2, 16))
    y[0, :3] = -1
    rewards = -0.02 * torch.rand(2, 16)  # pep8's ul_threshold 0.01 splits these
    results = []
    for chunk_size in (0, 12):  # 32 positions: chunks of 12, 12 and 8
        cfg = train.load_config([f'--method={method}', '--task=pep8', f'--loss_chunk_size={chunk_size}'])
        model.zero_grad(set_to_none=True)
        loss = train.compute_loss(cfg, model, x, y, rewards)
        loss.backward()
        results.append((loss.detach(), {k: p.grad for k, p in model.named_parameters()}))
    (plain_loss, plain_grads), (loss, grads) = results
    torch.testing.assert_close(loss, plain_loss, rtol=1e-5, atol=1e-6)
    for k in plain_grads:
        torch.testing.assert_close(grads[k], plain_grads[k], rtol=1e-4, atol=1e-6, msg=k)


def test_compiled_chunked_loss_matches_eager_plain(tiny_data, tmp_path):
    """The compiled graph of model and chunked loss trains like the eager model with the plain loss."""
    eager, compiled = str(tmp_path / 'eager'), str(tmp_path / 'compiled')
    run(tiny_args(tiny_data, eager, method='ul', max_tokens=3 * 4 * 32))
    run(tiny_args(tiny_data, compiled, method='ul', max_tokens=3 * 4 * 32, compile=True, loss_chunk_size=24))
    for step, loss in losses(eager).items():
        assert losses(compiled)[step] == pytest.approx(loss, rel=1e-4)


def test_graded_control_tokens_train(tiny_data, tmp_path):
    out = str(tmp_path / 'k3')
    run(tiny_args(tiny_data, out, method='cond', cond_bins=3, max_tokens=2 * 4 * 32))
    ckpt = torch.load(os.path.join(out, 'ckpt.pt'), map_location='cpu', weights_only=True)
    assert ckpt['step'] == 2 and ckpt['config']['cond_bins'] == 3
    graded = os.path.join(tiny_data, 'pep8', 'train.cond-0-0.1-42-k3')
    assert json.load(open(os.path.join(graded, 'header.json')))['vocab_size'] == data.GRADE_IDS[0] + 1
    with pytest.raises(train.ConfigError, match="cond_bins 3: graded control tokens are for method 'cond'"):
        run(tiny_args(tiny_data, str(tmp_path / 'mle'), cond_bins=3))
    with pytest.raises(train.ConfigError, match="cond_bins 24: must be between 2 and 23"):
        run(tiny_args(tiny_data, str(tmp_path / 'cond'), method='cond', cond_bins=24))


def test_init_seed_offset_changes_the_initial_weights_not_the_data_order(tiny_data, tmp_path):
    """At learning rate 0 the weights stay as initialised, so a step's loss tells which batch it was on which
    weights: seed 42 with offset 1000 starts from seed 1042's weights but reads seed 42's batches."""
    def weights_and_losses(name, **kw):
        out = str(tmp_path / name)
        run(tiny_args(tiny_data, out, method='cond', learning_rate=0, max_tokens=3 * 4 * 32, **kw))
        return torch.load(os.path.join(out, 'ckpt.pt'), weights_only=True)['model'], losses(out)
    plain, plain_losses = weights_and_losses('plain', seed=42)
    reinit, reinit_losses = weights_and_losses('reinit', seed=42, init_seed_offset=1000)
    other, other_losses = weights_and_losses('other', seed=1042)
    assert all(torch.equal(reinit[k], other[k]) for k in reinit)  # the control tokens' rows included
    assert not torch.equal(reinit['transformer.wte.weight'], plain['transformer.wte.weight'])
    assert reinit_losses != other_losses  # same weights, other batches
    # seed 42's batches: with the weights swapped in, the loss of each step is the reinit run's
    swapped = str(tmp_path / 'swapped')
    run(tiny_args(tiny_data, swapped, method='cond', learning_rate=0, max_tokens=3 * 4 * 32, seed=42,
                  init_from=os.path.join(str(tmp_path / 'other'), 'ckpt.pt')))
    assert losses(swapped) == reinit_losses
    with pytest.raises(train.ConfigError, match=r"init_seed_offset=1000 \(now 0\)"):
        run(tiny_args(tiny_data, str(tmp_path / 'reinit'), method='cond', learning_rate=0, max_tokens=6 * 4 * 32,
                      seed=42, resume=True))


def test_eta_follows_the_pace_of_the_latest_steps():
    """A step line's eta against the true time left, on a fake clock: a first step slowed by a compile, the first 4%
    of the steps slowed by another run starting beside it, then a steady pace with ±10% noise per step. From the
    first tenth of the run on, the eta is within 25% of the truth (the mean over all steps so far was 3x the truth at
    step 100 here)."""
    from types import SimpleNamespace
    max_steps = 1000
    durations = np.where(np.arange(max_steps) < 40, 0.8, 0.25) * np.random.default_rng(0).uniform(0.9, 1.1, max_steps)
    durations[0] += 30.0
    clock = [0.0]
    timer = train.Timer(0, clock=lambda: clock[0])
    run = SimpleNamespace(tokens_per_step=1024, max_steps=max_steps, step=0)
    etas = {}
    for step in range(1, max_steps + 1):
        clock[0] += durations[step - 1]
        timer.steps, run.step = timer.steps + 1, step
        if step % 25 == 0:
            tok_s, etas[step] = timer.lap(run)
            assert tok_s == pytest.approx(25 * 1024 / durations[step - 25:step].sum())
    for step, eta in etas.items():
        truth = durations[step:].sum()
        if step >= max_steps // 10:
            assert abs(eta - truth) <= 0.25 * truth, (step, eta, truth)
    assert etas[100] == pytest.approx(900 * durations[50:100].mean())  # the pace of the last 5% of the steps
    assert etas[max_steps] == 0
