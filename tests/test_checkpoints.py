"""Checkpoints load without running code: ours hold tensors and plain values only, and a file that asks for any other
Python global is refused before anything in it runs, in either of torch's formats."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import checkpoints
import train
from conftest import ROOT_DIR, tiny_args


class RunsCode:
    """Pickled, it asks the loader to call os.system: what a crafted ckpt.pt would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f'touch {self.marker}',)


def test_our_checkpoints_hold_no_pickled_code(tiny_data, tmp_path):
    out = str(tmp_path / 'run')
    train.main(tiny_args(tiny_data, out))
    path = os.path.join(out, 'ckpt.pt')
    assert torch.serialization.get_unsafe_globals_in_checkpoint(path) == []
    ckpt = torch.load(path, weights_only=True)  # torch's own safe loader, nothing allowed beyond its defaults
    assert ckpt['step'] == 8 and set(ckpt['rng'][0]) == {'python', 'numpy', 'torch', 'cuda'}
    assert ckpt['rng'][0]['numpy']['keys'].dtype == torch.int64 and ckpt['rng'][0]['numpy']['keys'].shape == (624,)


def test_rng_state_round_trip():
    np.random.seed(3)
    np.random.normal()  # a cached Gaussian in the state
    state = checkpoints.rng_state()
    expected = np.random.random(5), torch.rand(3)
    np.random.seed(0)
    torch.manual_seed(0)
    checkpoints.set_rng_state(state)
    assert np.array_equal(np.random.random(5), expected[0]) and torch.equal(torch.rand(3), expected[1])


def test_a_checkpoint_that_would_run_code_is_refused(tiny_data, tmp_path, capsys):
    out = str(tmp_path / 'run')
    train.main(tiny_args(tiny_data, out))
    ckpt = torch.load(os.path.join(out, 'ckpt.pt'), weights_only=True)
    marker = tmp_path / 'code_ran'
    crafted = str(tmp_path / 'crafted.pt')
    torch.save(dict(ckpt, extra=RunsCode(marker)), crafted)
    with pytest.raises(checkpoints.CheckpointError, match=rf"^{crafted}: refused: loading it would call "
                                                          rf"posix.system, which could run anything; a phf "
                                                          rf"checkpoint holds tensors and plain values only$"):
        checkpoints.read_checkpoint(crafted)
    assert not marker.exists()
    # every entry point reads checkpoints this way: evaluation, resume and finetuning say so in one line
    done = subprocess.run([sys.executable, 'evaluate.py', f'--ckpt={crafted}'], cwd=ROOT_DIR, capture_output=True,
                          text=True)
    assert done.returncode == 1 and 'refused: loading it would call posix.system' in done.stderr
    assert 'Traceback' not in done.stderr and not marker.exists()
    for run_dir, extra in ((str(tmp_path / 'finetune'), {'init_from': crafted}), (out, {'resume': True})):
        if 'resume' in extra:
            os.replace(crafted, os.path.join(out, 'ckpt.pt'))
        with pytest.raises(SystemExit) as e:
            train.main(tiny_args(tiny_data, run_dir, **extra))
        assert e.value.code == 1 and 'refused: loading it would call posix.system' in capsys.readouterr().err
    assert not marker.exists()


def test_a_file_in_torchs_older_format_is_judged_the_same(tmp_path):
    """torch.save's format before zip (a row of pickles): read as data if it holds data; refused as the code it would
    call, not as a damaged file, if it would call any; numpy arrays refused by name."""
    marker = tmp_path / 'code_ran'
    plain, crafted, arrays = (str(tmp_path / f'{n}.pt') for n in ('plain', 'crafted', 'arrays'))
    state = dict(model={'w': torch.arange(3.0)}, model_args={}, config={}, step=1, tokens_seen=4)
    for path, extra in ((plain, {}), (crafted, {'extra': RunsCode(marker)}), (arrays, {'extra': np.arange(2)})):
        torch.save(dict(state, **extra), path, _use_new_zipfile_serialization=False)
    assert torch.equal(checkpoints.read_checkpoint(plain)['model']['w'], torch.arange(3.0))
    with pytest.raises(checkpoints.CheckpointError, match=rf"^{crafted}: refused: loading it would call posix.system, "
                                                          rf"which could run anything; a phf checkpoint holds"):
        checkpoints.read_checkpoint(crafted)
    with pytest.raises(checkpoints.CheckpointError, match=rf"^{arrays}: refused: it holds numpy arrays \(numpy"):
        checkpoints.read_checkpoint(arrays)
    assert not marker.exists()


def test_a_detoxify_checkpoint_that_would_run_code_is_refused(tmp_path):
    """detoxify itself loads a local checkpoint with weights_only=False: the scorer checks the file first."""
    import scorers
    marker = tmp_path / 'code_ran'
    crafted = str(tmp_path / 'toxic.ckpt')
    torch.save({'config': {}, 'state_dict': {}, 'extra': RunsCode(marker)}, crafted)
    with pytest.raises(scorers.ScorerError, match=rf"^{crafted}: refused: loading it would call posix.system"):
        scorers.ToxicityScorer(checkpoint=crafted, device='cpu').score(['a text'])
    assert not marker.exists()
