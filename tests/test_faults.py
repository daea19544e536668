"""What goes wrong around training: refused settings, damaged files, interrupted and diverged runs. Each
fault must end in one line that names the file or setting, with the state on disk left as it was or made whole."""
import errno
import json
import os
import signal
import subprocess
import sys

import pytest
import torch

import checkpoints
import data
import evaluate
import train
from conftest import start_training, tiny_args

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(argv):
    return train.train(train.load_config(argv))


def main_fails(argv, capsys):
    """(exit status, stderr) of train.main, which must exit."""
    with pytest.raises(SystemExit) as exit_info:
        train.main(argv)
    return exit_info.value.code, capsys.readouterr().err


def records(out_dir, name='log.jsonl'):
    with open(os.path.join(out_dir, name)) as f:
        return [json.loads(line) for line in f]


def loss_steps(out_dir):
    return [(r['step'], r['loss']) for r in records(out_dir) if 'loss' in r]


def ckpt_step(out_dir, name='ckpt.pt'):
    return torch.load(os.path.join(out_dir, name), weights_only=True)['step']


def dead_pid():
    return int(subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'], capture_output=True,
                              text=True, check=True).stdout)


# ----------------------------------------------------------------------------------------------------------------
# Lost or silently wrong

def test_fresh_run_refuses_an_out_dir_with_a_run(tiny_data, tmp_path, capsys):
    out = str(tmp_path / 'run')
    run(tiny_args(tiny_data, out, max_tokens=4 * 4 * 32, keep_ckpt_steps='2'))
    log_before = open(os.path.join(out, 'log.jsonl')).read()
    code, err = main_fails(tiny_args(tiny_data, out, max_tokens=6 * 4 * 32), capsys)
    assert code == 1 and err.count('\n') == 1
    assert f"error: {out} holds a run" in err and '--resume=True' in err and '--overwrite=True' in err
    assert open(os.path.join(out, 'log.jsonl')).read() == log_before and ckpt_step(out) == 4
    open(os.path.join(out, 'eval_step4.json'), 'w').write('{}')
    open(os.path.join(out, 'eval.jsonl'), 'w').write('{"step": 4}\n')
    run(tiny_args(tiny_data, out, max_tokens=6 * 4 * 32, overwrite=True))
    assert [s for s, _ in loss_steps(out)] == [1, 2, 3, 4, 5, 6] and ckpt_step(out) == 6
    assert sorted(os.listdir(out)) == ['ckpt.pt', 'log.jsonl']  # the old run's ckpt_step2.pt and evaluations too


def test_a_run_in_progress_keeps_its_out_dir_to_itself(tiny_data, tmp_path, capsys):
    import socket
    out = str(tmp_path / 'run')
    run(tiny_args(tiny_data, out, max_tokens=2 * 4 * 32))
    assert 'run.lock' not in os.listdir(out)  # released at the end
    live = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])
    try:
        lock = os.path.join(out, 'run.lock')
        with open(lock, 'w') as f:
            json.dump(dict(host=socket.gethostname(), pid=live.pid), f)
        log_before = open(os.path.join(out, 'log.jsonl')).read()
        code, err = main_fails(tiny_args(tiny_data, out, max_tokens=4 * 4 * 32, resume=True), capsys)
        assert code == 1 and f"error: {out} is in use by process {live.pid}, a run in progress" in err
        assert open(os.path.join(out, 'log.jsonl')).read() == log_before and ckpt_step(out) == 2
        with open(lock, 'w') as f:
            json.dump(dict(host='elsewhere', pid=live.pid), f)
        code, err = main_fails(tiny_args(tiny_data, out, max_tokens=4 * 4 * 32, resume=True), capsys)
        assert f"in use by process {live.pid} on elsewhere" in err and f"delete {lock}" in err
    finally:
        live.kill()
        live.wait()
    with open(lock, 'w') as f:  # a killed run's lock: taken over
        json.dump(dict(host=socket.gethostname(), pid=live.pid), f)
    run(tiny_args(tiny_data, out, max_tokens=4 * 4 * 32, resume=True))
    assert ckpt_step(out) == 4 and 'run.lock' not in os.listdir(out)


def test_resume_refuses_settings_a_run_cannot_change_and_prints_the_others(tiny_data, tmp_path, capsys):
    out = str(tmp_path / 'run')
    run(tiny_args(tiny_data, out, max_tokens=4 * 4 * 32))
    for change, message in ((dict(n_layer=3), 'n_layer=2 (now 3)'), (dict(method='cond'), "method='mle' (now 'cond')"),
                            (dict(seed=1, total_batch_size=8), "total_batch_size=4 (now 8), seed=42 (now 1)")):
        with pytest.raises(train.ConfigError, match=r"ckpt.pt was trained with .*cannot change in a run in progress"
                           ) as e:
            run(tiny_args(tiny_data, out, max_tokens=4 * 4 * 32, resume=True, **change))
        assert message in str(e.value)
    assert ckpt_step(out) == 4 and len(loss_steps(out)) == 4
    capsys.readouterr()
    run(tiny_args(tiny_data, out, max_tokens=6 * 4 * 32, learning_rate=5e-4, batch_size=4, resume=True))
    assert "resuming with changed settings: max_tokens 512 -> 768, batch_size 2 -> 4, learning_rate 0.001 -> " \
           "0.0005" in capsys.readouterr().out
    saved = torch.load(os.path.join(out, 'ckpt.pt'), weights_only=True)
    assert saved['step'] == 6 and saved['config']['learning_rate'] == 5e-4
    with pytest.raises(train.ConfigError, match=r"max_tokens 256: 2 steps, fewer than the 6 steps of"):
        run(tiny_args(tiny_data, out, max_tokens=2 * 4 * 32, resume=True))


@pytest.mark.parametrize('setting, message', [
    ('batch_size=-8', 'batch_size -8: must be at least 1'),
    ('batch_size=0', 'batch_size 0: must be at least 1'),
    ('log_interval=0', 'log_interval 0: must be at least 1'),
    ('ckpt_interval=0', 'ckpt_interval 0: must be at least 1'),
    ('eval_interval=-1', 'eval_interval -1: must be 0 or more'),
    ('learning_rate=-0.001', 'learning_rate -0.001: must be 0 or more'),
    ('learning_rate=1e999', 'learning_rate inf: must be a finite number'),
    ('dropout=1.5', 'dropout 1.5: must be between 0 and 1'),
    ('beta2=1.0', 'beta2 1.0: must be at least 0 and below 1'),
    ('awr_beta=0', 'awr_beta 0.0: must be above 0'),
    ('n_head=3', 'n_embd 32 is not a multiple of n_head 3'),
    ('min_lr=0.1', 'min_lr 0.1 is above learning_rate 0.001'),
    ('keep_ckpt_steps=2,x', "keep_ckpt_steps '2,x': expected step numbers"),
    ('device=tpu', "device 'tpu': choose auto, cpu, cuda or cuda:N"),
])
def test_impossible_numbers_are_refused_at_load_time(tiny_data, tmp_path, capsys, setting, message):
    argv = tiny_args(tiny_data, str(tmp_path / 'run')) + [f'--{setting}']
    code, err = main_fails(argv, capsys)
    assert code == 1 and err.startswith('error: ') and err.count('\n') == 1
    assert message in err
    assert not os.path.exists(tmp_path / 'run')


def test_cuda_without_cuda_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    with pytest.raises(train.ConfigError, match=r"device 'cuda': CUDA is not available on this machine; use "
                                                r"--device=cpu"):
        train.load_config(['--device=cuda'])


def test_evaluation_settings_are_checked_before_the_first_step(tiny_data, tmp_path):
    out = str(tmp_path / 'run')
    for settings, error in (
            (dict(eval_samples=2, eval_scenarios='unconditional,sideways'), "unknown scenario 'sideways'"),
            (dict(eval_samples=2, eval_scenarios='misaligned'), "'misaligned'.*is for method 'cond' only"),
            (dict(eval_samples=2, eval_guidance=1.0), "eval_guidance: guided sampling needs a conditional model"),
            (dict(eval_samples=2, eval_scenarios='prompted'), "'prompted' needs --eval_prompts=PATH"),
            (dict(eval_samples=2, eval_prompts=str(tmp_path / 'prompts.jsonl')),
             r"eval_prompts .*prompts.jsonl: file not found"),
            (dict(kl_reference=str(tmp_path / 'ref.pt')), r"kl_reference .*ref.pt: file not found")):
        with pytest.raises(train.ConfigError, match=error):
            run(tiny_args(tiny_data, out, **settings))
        assert not os.path.exists(out)
    os.rename(os.path.join(tiny_data, 'pep8', 'val'), os.path.join(tiny_data, 'pep8', 'elsewhere'))
    with pytest.raises(data.DataError, match=r"pep8/val/header.json: not found"):
        run(tiny_args(tiny_data, out, eval_iters=1))
    run(tiny_args(tiny_data, out, eval_iters=0, max_tokens=1 * 4 * 32))  # no evaluation: no val split needed


def test_a_failed_final_evaluation_is_run_by_the_resume(tiny_data, tmp_path, monkeypatch, capsys):
    out = str(tmp_path / 'run')
    argv = tiny_args(tiny_data, out, max_tokens=4 * 4 * 32, eval_iters=1)
    real_evaluate = evaluate.evaluate

    def scorer_down(*args, **kwargs):
        raise evaluate.EvalError('the scorer is down')

    monkeypatch.setattr(evaluate, 'evaluate', scorer_down)
    code, err = main_fails(argv, capsys)
    ckpt = os.path.join(out, 'ckpt.pt')
    assert code == 1 and 'error during evaluation: the scorer is down' in err
    assert f"`python train.py {' '.join(argv)} --resume=True`" in err and f"`python evaluate.py --ckpt={ckpt}`" in err
    assert ckpt_step(out) == 4 and not os.path.exists(os.path.join(out, 'eval.jsonl'))
    monkeypatch.setattr(evaluate, 'evaluate', real_evaluate)
    train.main(argv + ['--resume=True'])
    assert [r['step'] for r in records(out, 'eval.jsonl')] == [4]
    train.main(argv + ['--resume=True'])  # evaluated: nothing to do
    assert [r['step'] for r in records(out, 'eval.jsonl')] == [4]


def diverge_after(monkeypatch, calls):
    """MLE's loss turns NaN after this many micro-batches."""
    counter, real_mle = [], train.objectives.mle

    def mle(logits, targets):
        counter.append(1)
        loss = real_mle(logits, targets)
        return loss * float('nan') if len(counter) > calls else loss

    monkeypatch.setattr(train.objectives, 'mle', mle)


def test_diverged_weights_are_never_evaluated_nor_saved(tiny_data, tmp_path, monkeypatch):
    diverge_after(monkeypatch, 4)  # step 3 of 2 micro-batches each; checked in the log at step 4, evaluated at 3
    out = str(tmp_path / 'run')
    with pytest.raises(train.TrainingError) as e:
        run(tiny_args(tiny_data, out, log_interval=4, eval_interval=3, eval_iters=1))
    assert str(e.value) == ("non-finite loss at or before step 3; stopped, no checkpoint was saved: lower "
                            "learning_rate and start again")  # no word of bf16 to a float32 run
    assert sorted(os.listdir(out)) == ['log.jsonl']

    monkeypatch.undo()
    diverge_after(monkeypatch, 6)  # step 4
    out = str(tmp_path / 'saved')
    with pytest.raises(train.TrainingError) as e:
        run(tiny_args(tiny_data, out, ckpt_interval=2, log_interval=4, dtype='float16', eval_interval=5))
    assert str(e.value) == (f"non-finite loss at step 4; stopped without saving. {out}/ckpt.pt holds step 2, the "
                            f"last good one: lower learning_rate or use dtype=bfloat16 (float16 overflows), then "
                            f"--resume=True")
    assert ckpt_step(out) == 2


# ----------------------------------------------------------------------------------------------------------------
# Tracebacks instead of one line

def test_damaged_checkpoints_are_named(tiny_data, tmp_path, capsys):
    out = str(tmp_path / 'run')
    run(tiny_args(tiny_data, out, max_tokens=2 * 4 * 32))
    good = open(os.path.join(out, 'ckpt.pt'), 'rb').read()
    bad = str(tmp_path / 'bad.pt')
    for content, error in ((b'', 'empty file'), (good[:len(good) // 2], 'truncated or corrupt'),
                           (b'{"step": 1}', 'truncated or corrupt')):
        open(bad, 'wb').write(content)
        with pytest.raises(checkpoints.CheckpointError, match=f"{bad}: {error}"):
            checkpoints.read_checkpoint(bad)
    torch.save({'state_dict': {}}, bad)
    with pytest.raises(checkpoints.CheckpointError,
                       match=f"{bad}: not a phf checkpoint .it has no model, model_args, "):
        checkpoints.read_checkpoint(bad)
    with pytest.raises(checkpoints.CheckpointError, match=f"{tmp_path}/none.pt: checkpoint not found"):
        checkpoints.read_checkpoint(str(tmp_path / 'none.pt'))
    assert checkpoints.read_checkpoint(os.path.join(out, 'ckpt.pt'))['step'] == 2

    open(os.path.join(out, 'ckpt.pt'), 'wb').write(good[:1000])
    code, err = main_fails(tiny_args(tiny_data, out, max_tokens=2 * 4 * 32, resume=True), capsys)
    assert code == 1 and err.startswith(f"error: {out}/ckpt.pt: truncated or corrupt") and err.count('\n') == 1
    code, err = main_fails(tiny_args(tiny_data, str(tmp_path / 'ft'), init_from=bad), capsys)
    assert code == 1 and err.startswith(f"error: {bad}: not a phf checkpoint")


def test_config_file_errors_name_the_file_and_line(tmp_path):
    path = tmp_path / 'conf.py'
    path.write_text("n_layer = 2\nn_head = (2\n")
    with pytest.raises(train.ConfigError, match=f"{path}, line 2: '.' was never closed"):
        train.load_config([str(path)])
    path.write_text("n_layer = 2\n\ncompile = false\n")
    with pytest.raises(train.ConfigError, match=f"{path}, line 3: NameError: name 'false' is not defined"):
        train.load_config([str(path)])
    path.write_text("learning_rate = float('nan')\n")
    with pytest.raises(train.ConfigError, match="learning_rate nan: must be a finite number"):
        train.load_config([str(path)])


def test_a_full_disk_while_saving_keeps_the_previous_checkpoint(tiny_data, tmp_path, monkeypatch, capsys):
    real_save, saves = torch.save, []

    def save_on_a_full_disk(obj, f):
        saves.append(1)
        if len(saves) < 2:
            return real_save(obj, f)
        f.write(b'part of a checkpoint')
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, 'save', save_on_a_full_disk)
    out = str(tmp_path / 'run')
    code, err = main_fails(tiny_args(tiny_data, out, ckpt_interval=2), capsys)
    monkeypatch.undo()
    assert code == 1 and err.count('\n') == 1
    assert err.startswith(f"error: {out}/ckpt.pt: not saved, No space left on device; the checkpoint there before")
    assert ckpt_step(out) == 2 and sorted(os.listdir(out)) == ['ckpt.pt', 'log.jsonl']


# ----------------------------------------------------------------------------------------------------------------
# Leftovers and duplicates

def test_resumed_history_is_the_uninterrupted_one(tiny_data, tmp_path, monkeypatch):
    args = dict(ckpt_interval=5, eval_interval=4, eval_iters=1)  # checkpoints at 4 (before its evaluation), 5, 8
    full = str(tmp_path / 'full')
    run(tiny_args(tiny_data, full, **args))
    calls, real_mle = [], train.objectives.mle

    def killed_in_step_7(logits, targets):
        calls.append(1)
        if len(calls) > 12:
            raise KeyboardInterrupt  # as a kill: nothing after it runs
        return real_mle(logits, targets)

    monkeypatch.setattr(train.objectives, 'mle', killed_in_step_7)
    out = str(tmp_path / 'killed')
    with pytest.raises(KeyboardInterrupt):
        run(tiny_args(tiny_data, out, **args))
    monkeypatch.undo()
    assert [s for s, _ in loss_steps(out)] == [1, 2, 3, 4, 5, 6] and ckpt_step(out) == 5
    with open(os.path.join(out, 'log.jsonl'), 'a') as f:
        f.write('{"step": 7, "lo')  # a record cut by the kill
    with open(os.path.join(out, 'eval.jsonl'), 'a') as f:  # an evaluation after the checkpoint (as older runs wrote)
        f.write('{"step": 6, "val_loss": 7.0}\n')
    open(os.path.join(out, 'eval_step6.json'), 'w').write('{}')
    run(tiny_args(tiny_data, out, resume=True, **args))
    assert loss_steps(out) == loss_steps(full)
    assert records(out, 'eval.jsonl') == records(full, 'eval.jsonl')
    assert [r['step'] for r in records(out, 'eval.jsonl')] == [4, 8]
    assert sorted(os.listdir(out)) == ['ckpt.pt', 'eval.jsonl', 'eval_step4.json', 'eval_step8.json', 'log.jsonl']


def test_leftovers_of_killed_runs_are_removed(tiny_data, tmp_path):
    out = tmp_path / 'run'
    out.mkdir()
    dead, alive = dead_pid(), os.getppid()
    for name in (f'ckpt.pt.tmp-{dead}', f'ckpt_step8.pt.tmp-{dead}', f'ckpt.pt.tmp-{alive}', str(dead)):
        (out / name).write_bytes(b'partial')
    split_parent = os.path.join(tiny_data, 'pep8')
    for name in (f'train.cond-0-0.1-42.tmp-{dead}', f'train.filter-0.1.tmp-{alive}'):
        os.makedirs(os.path.join(split_parent, name, 'train'))
    run(tiny_args(tiny_data, str(out), method='cond', max_tokens=1 * 4 * 32))
    assert sorted(os.listdir(out)) == sorted(['ckpt.pt', 'log.jsonl', f'ckpt.pt.tmp-{alive}', str(dead)])
    assert sorted(os.listdir(split_parent)) == ['train', 'train.cond-0-0.1-42', f'train.filter-0.1.tmp-{alive}',
                                                'val']


def test_data_dir_naming_a_task_folder_says_which_to_pass(tiny_data, tmp_path):
    for wrong in ('pep8', 'pep8/train'):
        with pytest.raises(train.ConfigError, match=rf"data_dir {tiny_data}/{wrong}: this is one task's prepared "
                                                    rf"folder .* --data_dir={tiny_data}$"):
            run(tiny_args(os.path.join(tiny_data, wrong), str(tmp_path / 'run')))
    os.rename(os.path.join(tiny_data, 'pep8'), os.path.join(tiny_data, 'code'))
    with pytest.raises(train.ConfigError, match=rf"--data_dir={tiny_data}, once {tiny_data}/code is renamed "
                                                rf"{tiny_data}/pep8"):
        run(tiny_args(os.path.join(tiny_data, 'code'), str(tmp_path / 'run')))


# ----------------------------------------------------------------------------------------------------------------
# Preemption

def test_sigterm_saves_the_step_and_the_resume_ends_as_an_uninterrupted_run(tiny_data, tmp_path):
    args = dict(max_tokens=100 * 4 * 32, ckpt_interval=200, dropout=0.1)
    full = str(tmp_path / 'full')
    run(tiny_args(tiny_data, full, **args))
    out = str(tmp_path / 'preempted')
    proc = start_training(tiny_data, out, 5, stderr=subprocess.PIPE, **args)  # it cannot pass step ~70 unread
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate()
    assert proc.returncode == 128 + signal.SIGTERM
    stopped_at = ckpt_step(out)
    assert 5 <= stopped_at < 100 and loss_steps(out)[-1][0] == stopped_at  # the step it was in, not one at 200
    assert f"stopped by SIGTERM at step {stopped_at}; {out}/ckpt.pt holds it; continue the run with: python " \
           f"train.py" in err and err.rstrip().endswith('--resume=True')
    run(tiny_args(tiny_data, out, resume=True, **args))
    assert loss_steps(out) == loss_steps(full)
    a = torch.load(os.path.join(full, 'ckpt.pt'), weights_only=True)['model']
    b = torch.load(os.path.join(out, 'ckpt.pt'), weights_only=True)['model']
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_ctrl_c_ends_the_step_and_saves_it(tiny_data, tmp_path, monkeypatch, capsys):
    calls, real_mle, handler = [], train.objectives.mle, signal.getsignal(signal.SIGINT)

    def ctrl_c_in_step_3(logits, targets):
        calls.append(1)
        if len(calls) == 5:
            os.kill(os.getpid(), signal.SIGINT)
        return real_mle(logits, targets)

    monkeypatch.setattr(train.objectives, 'mle', ctrl_c_in_step_3)
    out = str(tmp_path / 'run')
    code, err = main_fails(tiny_args(tiny_data, out), capsys)
    assert code == 128 + signal.SIGINT and 'stopped by SIGINT at step 3' in err
    assert ckpt_step(out) == 3 and len(loss_steps(out)) == 3
    assert signal.getsignal(signal.SIGINT) is handler  # given back


def test_under_ddp_every_rank_stops_at_the_step_one_rank_was_signalled_in(tiny_data, tmp_path):
    script = tmp_path / 'train_signalled_on_rank_1.py'
    script.write_text(f"""import os, signal, sys
sys.path.insert(0, {ROOT!r})
import train
calls, real_mle = [], train.objectives.mle

def mle(logits, targets):  # rank 1 alone gets SIGTERM, in its fifth micro-batch (step 5)
    calls.append(1)
    if os.environ['RANK'] == '1' and len(calls) == 5:
        os.kill(os.getpid(), signal.SIGTERM)
    return real_mle(logits, targets)

train.objectives.mle = mle
train.main(sys.argv[1:])
""")
    out = str(tmp_path / 'ddp')
    result = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
                             str(script)] + tiny_args(tiny_data, out, max_tokens=20 * 4 * 32, ckpt_interval=100),
                            cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS='1'), capture_output=True, text=True,
                            timeout=120)  # a rank left waiting in a collective would hang here
    assert result.returncode != 0 and result.stderr.count('stopped by SIGTERM at step 5') == 2
    assert ckpt_step(out) == 5 and [s for s, _ in loss_steps(out)] == [1, 2, 3, 4, 5]


def test_a_process_pool_started_during_training_ends(tmp_path):
    """A pool's workers are forked with the training loop's signal handlers; a pool ends its busy workers with
    SIGTERM, which they must obey (before, a worker took it for a stop request and the scorer pool hung)."""
    script = tmp_path / 'pool_under_stop_signals.py'
    script.write_text(f"""import multiprocessing as mp, os, sys, time
sys.path.insert(0, {ROOT!r})
import runs
stop = runs.StopSignals(False, 'cpu')
stop.install()
t0 = time.time()
with mp.get_context('fork').Pool(1) as pool:  # leaving the block terminates the busy worker with SIGTERM
    pool.apply_async(time.sleep, (30,))
    time.sleep(1)
print(f'pool ended in {{time.time() - t0:.0f}} s; stop flag {{stop.received()}}')
""")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    seconds, _, flag = out.stdout.removeprefix('pool ended in ').partition(' s; ')
    # ended by the pool (its worker obeyed SIGTERM), not after the 30 s of its task; the stop flag untouched
    assert out.returncode == 0 and float(seconds) < 30 and flag == 'stop flag 0\n', (out.stdout, out.stderr)


def test_a_resume_onto_data_prepared_again_is_refused(tmp_path, capsys):
    """prepare.py again into the same data_dir between a run and its resume: the same text gives the same splits and
    the run goes on; other text is refused, naming what changed."""
    from conftest import make_dataset
    tiny = make_dataset(str(tmp_path / 'data'))
    out = str(tmp_path / 'run')
    run(tiny_args(tiny, out, max_tokens=4 * 4 * 32))
    make_dataset(tiny)  # the same documents written again (a newer 'created' in the headers)
    run(tiny_args(tiny, out, max_tokens=6 * 4 * 32, resume=True))
    assert ckpt_step(out) == 6
    make_dataset(tiny, seed=1)  # other documents
    code, err = main_fails(tiny_args(tiny, out, max_tokens=8 * 4 * 32, resume=True), capsys)
    assert code == 1 and err.startswith(f"error: --resume=True: {out}/ckpt.pt was trained on other data than "
                                        f"{tiny}/pep8 holds now (train: ")
    assert "tokens from random then, " in err and "prepared again since?" in err
    assert ckpt_step(out) == 6
