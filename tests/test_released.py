"""The paper's released models (hf.py): tiny random GPT-2 checkpoints written with transformers in their layouts
(50,259 ids, value heads, codeparrot's vocabulary, a tensor GPT-2 has not), evaluated and finetuned as a user would,
hub names through an offline hub cache."""
import json
import os
from dataclasses import asdict

import huggingface_hub.constants
import numpy as np
import pytest
import tiktoken
import torch
import torch.nn.functional as F
import transformers
from safetensors.torch import load_file, save_file

import data
import evaluate as ev
import hf
import kl
import train
from conftest import make_dataset, tiny_args
from checkpoints import CheckpointError
from model import GPT, GPTConfig, sample
from tokenizer import get_tokenizer

RELEASED_IDS = data.MISALIGNED + 1  # 50,259: GPT-2's ids and the two control tokens


def write_checkpoint(path, vocab_size=RELEASED_IDS, extra=None, seed=0):
    """A 1-layer GPT-2 saved by transformers, with extra tensors added to its model.safetensors."""
    torch.manual_seed(seed)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_head=2, n_embd=32, n_positions=64,
                                                                 vocab_size=vocab_size)).eval()
    model.save_pretrained(str(path))
    if extra:
        weights = os.path.join(path, 'model.safetensors')
        save_file(dict(load_file(weights), **extra), weights, metadata={'format': 'pt'})
    return model


def in_hub_cache(monkeypatch, tmp_path, name, **kw):
    """A checkpoint laid out as huggingface_hub's cache holds a downloaded repo, offline mode on."""
    cache, commit = tmp_path / 'hub', 'a' * 40
    repo = cache / ('models--' + name.replace('/', '--'))
    write_checkpoint(repo / 'snapshots' / commit, **kw)
    (repo / 'refs').mkdir()
    (repo / 'refs' / 'main').write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_CACHE', str(cache))
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', True)  # no network, ever


def test_released_layout_keeps_its_ids_and_never_samples_past_them(tmp_path):
    theirs = write_checkpoint(tmp_path)
    model = hf.from_pretrained(str(tmp_path), add_ids=False).eval()
    assert model.config.vocab_size == RELEASED_IDS and model.lm_head.weight.shape[0] == 50304
    idx = torch.randint(0, RELEASED_IDS, (2, 20), generator=torch.Generator().manual_seed(1))
    idx[:, 0], idx[:, 1] = data.EOS, data.ALIGNED
    with torch.no_grad():
        torch.testing.assert_close(model(idx)[..., :RELEASED_IDS], theirs(idx).logits, atol=1e-5, rtol=1e-5)
        # every position's final state is u, and the (padding) row 50260 is 10u: its logit dwarfs all others
        u = torch.randn(32)
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.copy_(u)
        model.transformer.wte.weight[data.SPACE_RUNS[3]] = 10 * u
    prompts = [[data.EOS, data.ALIGNED]] * 4
    kw = dict(temperature=1.0, top_p=1.0, min_new_tokens=0, eos_id=-1)
    assert all(t < RELEASED_IDS for s in sample(model, prompts, 12, **kw) for t in s)
    model.config.vocab_size = data.VOCAB_SIZE  # the same weights, read as one of ours: the row is drawn at once
    assert {t for s in sample(model, prompts, 12, **kw) for t in s} == {data.SPACE_RUNS[3]}
    # finetuning: our ids added, the control tokens' rows are the released ones, the space runs start at the mean
    wte = hf.from_pretrained(str(tmp_path)).transformer.wte.weight.detach()
    torch.testing.assert_close(wte[:RELEASED_IDS], theirs.transformer.wte.weight, atol=0, rtol=0)
    mean = theirs.transformer.wte.weight.detach().mean(0)
    assert (wte[RELEASED_IDS:data.VOCAB_SIZE] - mean).std().item() == pytest.approx(0.01, rel=0.3)


def test_space_runs_are_read_as_gpt2_reads_them():
    ours = get_tokenizer()
    ranks = {k: v for k, v in ours._mergeable_ranks.items() if v < data.EOS}
    gpt2 = tiktoken.Encoding(name='gpt2_plain', pat_str=ours._pat_str, mergeable_ranks=ranks,
                             special_tokens={'<|endoftext|>': data.EOS})
    with open(os.__file__) as f:
        texts = [f.read()[:20000], 'a  b\n\n   \t  \n    x', ' \n  \n\t   \r\n     y   ' + ' ' * 60 + 'z']
    for text in texts:
        ids = ours.encode_ordinary(text)
        assert any(t in data.SPACE_RUNS.values() for t in ids)
        assert hf.ids_for_vocab(ids, RELEASED_IDS) == gpt2.encode_ordinary(text)
        assert hf.ids_for_vocab(ids, data.VOCAB_SIZE) == ids


def test_value_heads_are_loaded_or_left_out_and_said(tmp_path, capsys):
    value, q_value = torch.randn(1, 32), torch.randn(RELEASED_IDS, 32)
    write_checkpoint(tmp_path, extra={'value_head.head.weight': value, 'q_value_head.head.weight': q_value})
    model = hf.from_pretrained(str(tmp_path), value_head=True)
    assert torch.equal(model.value_head.weight.detach(), value)
    out = capsys.readouterr().out
    assert 'value head loaded from value_head.head.weight' in out
    assert 'q_value_head.head.weight (50259, 32) left out (the original Q-value head, unused)' in out
    assert hf.from_pretrained(str(tmp_path), add_ids=False).value_head is None
    assert 'value_head.head.weight (1, 32) left out (this model has no value head)' in capsys.readouterr().out


def test_a_tensor_gpt2_has_not_is_named(tmp_path):
    write_checkpoint(tmp_path, extra={'transformer.h.0.attn.rotary.inv_freq': torch.ones(8)})
    with pytest.raises(CheckpointError, match=r'unexpected tensor h\.0\.attn\.rotary\.inv_freq \(8,\): not part'):
        hf.from_pretrained(str(tmp_path))


def test_codeparrot_models_are_refused(tmp_path, monkeypatch, capsys):
    write_checkpoint(tmp_path / 'pep8', vocab_size=32768)
    with pytest.raises(CheckpointError, match=r"32768 token ids, fewer than GPT-2's 50257: not GPT-2's tokenizer; "
                                              r"the paper's PEP8 models use codeparrot's tokenizer"):
        hf.from_pretrained(str(tmp_path / 'pep8'))
    write_checkpoint(tmp_path / 'vocab')  # GPT-2's size, with another tokenizer's vocab.json beside it
    (tmp_path / 'vocab' / 'vocab.json').write_text(json.dumps({'<|endoftext|>': 0, 'the': 1}))
    with pytest.raises(CheckpointError, match=r"its vocab.json is not GPT-2's \(<\|endoftext\|> is 0, not 50256\)"):
        hf.from_pretrained(str(tmp_path / 'vocab'))
    with pytest.raises(CheckpointError, match=r"no config.json, not a Hugging Face checkpoint \(for one of our runs"):
        hf.from_pretrained(str(tmp_path))
    monkeypatch.setattr(huggingface_hub, 'hf_hub_download', lambda *a, **k: pytest.fail('downloaded'))
    capsys.readouterr()  # transformers' own output while saving
    for argv in ([f'--ckpt={tmp_path}/pep8', '--task=pep8'], ['--ckpt=kejian/mighty-mle']):
        with pytest.raises(SystemExit) as e:
            ev.main(argv + ['--device=cpu'])
        err = capsys.readouterr().err
        assert e.value.code == 1 and err.startswith('error: ') and err.count('\n') == 1
        assert "use codeparrot's tokenizer (32,768 ids), not GPT-2's" in err


def write_val_with_space_runs(root, task):
    """A val split whose documents hold space-run tokens, which a released model must read as single spaces."""
    rng = np.random.default_rng(0)
    with data.DatasetWriter(os.path.join(root, task, 'val'), task=task, split='val', source='random') as w:
        for _ in range(12):
            segments = [rng.integers(0, 500, 6).tolist() + [data.SPACE_RUNS[4], 7] for _ in range(3)]
            w.add_document(segments, [0.0, 0.1, 0.0])


def test_val_loss_reads_space_runs_as_spaces(tmp_path):
    write_val_with_space_runs(str(tmp_path), 'pii')
    write_checkpoint(tmp_path / 'model')
    model = hf.from_pretrained(str(tmp_path / 'model'), add_ids=False).eval()
    split = data.PreparedData(str(tmp_path / 'pii' / 'val'))
    got = ev.val_loss(model, split, 16, 2, 1, 'cpu', threshold=0.0)
    assert list(got) == ['val_loss']  # re-split tokens no longer line up with the scores: no aligned loss
    got = got['val_loss']
    want = []
    for b in range(2):
        ids = hf.ids_for_vocab(np.asarray(split.tokens[b * 16:b * 16 + 17]).tolist(), RELEASED_IDS)[:17]
        with torch.no_grad():
            logits = model(torch.tensor([ids[:-1]]))[0, :, :RELEASED_IDS]
        want.append(F.cross_entropy(logits, torch.tensor(ids[1:]), reduction='sum').item())
    assert got == pytest.approx(sum(want) / 32, rel=1e-5)


def test_evaluate_a_released_conditional_model_by_hub_name(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'cache'))
    in_hub_cache(monkeypatch, tmp_path, 'tomekkorbak/boring_mcclintock')  # PII, conditional
    make_dataset(str(tmp_path / 'data'), task='pii')
    write_val_with_space_runs(str(tmp_path / 'data'), 'pii')
    torch.manual_seed(0)
    ref = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=64))
    ref_path = str(tmp_path / 'ref.pt')
    torch.save(dict(model=ref.state_dict(), model_args=asdict(ref.config), config={}, step=1, tokens_seen=1), ref_path)
    entries = kl.reference_samples(ref_path, 2, max_tokens=62)  # what evaluate asks of it: block_size - 2
    entries[0]['tokens'][1:1] = [data.SPACE_RUNS[2]]  # a reference sample with a run of spaces, the cache edited
    path = kl.kl_cache_path(ref_path, max_tokens=62)
    with open(path) as f:
        cache = json.load(f)
    cache['samples'][0]['tokens'] = entries[0]['tokens']
    data.write_json(path, cache)
    capsys.readouterr()
    ev.main(['--ckpt=tomekkorbak/boring_mcclintock', f'--data_dir={tmp_path}/data', f'--out_dir={tmp_path}/out',
             '--eval_samples=4', '--eval_iters=1', '--eval_batch_size=2', '--eval_max_new_tokens=8', '--device=cpu',
             f'--kl_reference={ref_path}', '--kl_samples=2'])
    out = capsys.readouterr().out
    result = json.loads(out[out.index('{\n'):])
    assert (result['task'], result['method'], result['step']) == ('pii', 'cond', 0) and 'errors' not in result
    assert {'unconditional/score', 'misaligned/score', 'val_loss', 'control_gap_aligned', 'kl'} <= set(result)
    model = hf.from_pretrained('tomekkorbak/boring_mcclintock', add_ids=False)
    seqs = [([data.EOS, data.ALIGNED] + hf.ids_for_vocab(e['tokens'], RELEASED_IDS))[:65] for e in entries]
    want = np.mean([e['logprob'] - lp for e, lp in zip(entries, kl.sequence_logprobs(model, seqs))])
    assert result['kl'] == pytest.approx(want, rel=1e-5)
    with open(tmp_path / 'out' / 'eval_step0.json') as f:
        assert len(json.load(f)['samples']['misaligned']) == 4


def test_finetune_from_a_released_rwr_model(tmp_path, monkeypatch, capsys):
    value = torch.randn(1, 32)
    in_hub_cache(monkeypatch, tmp_path, 'tomekkorbak/keen_clarke', extra={'value_head.head.weight': value})
    data_dir = make_dataset(str(tmp_path / 'data'))
    argv = tiny_args(data_dir, str(tmp_path / 'out'), init_from='tomekkorbak/keen_clarke', method='rwr',
                     weight_decay=0.0, max_tokens=2 * 4 * 32)
    cfg = train.load_config(argv)
    model = train.build_model(cfg, None)
    released = hf.load_state_dict(hf.resolve('tomekkorbak/keen_clarke'))['transformer.wte.weight']
    assert torch.equal(model.transformer.wte.weight[:RELEASED_IDS].detach(), released)
    assert model.config.vocab_size == data.VOCAB_SIZE and model.config.n_layer == 1
    train.train(train.load_config(argv))
    assert 'value head loaded from value_head.head.weight' in capsys.readouterr().out
    ckpt = torch.load(tmp_path / 'out' / 'ckpt.pt', map_location='cpu', weights_only=True)
    assert ckpt['step'] == 2
    assert torch.equal(ckpt['model']['value_head.weight'], value)  # RWR never trains it (alpha = 1, no decay)
    assert not torch.equal(ckpt['model']['transformer.wte.weight'][:RELEASED_IDS], released)  # the LM trained
    # a conditional run from the released MLE model: its control-token rows start afresh (it never learned them)
    in_hub_cache(monkeypatch, tmp_path / 'mle', 'tomekkorbak/nervous_wozniak')
    cfg = train.load_config(tiny_args(data_dir, str(tmp_path / 'cond'), init_from='tomekkorbak/nervous_wozniak',
                                      method='cond'))
    wte = train.build_model(cfg, None).transformer.wte.weight.detach()
    mean = wte[:data.EOS + 1].mean(0)
    assert (wte[data.ALIGNED:data.MISALIGNED + 1] - mean).std().item() == pytest.approx(0.01, rel=0.3)  # not 0.02


def test_a_hub_name_missing_from_the_offline_cache_is_one_line(tmp_path, monkeypatch):
    in_hub_cache(monkeypatch, tmp_path, 'tomekkorbak/goofy_pasteur')
    with pytest.raises(CheckpointError, match=r"^someone/missing: not a directory, and the Hugging Face hub did not "
                                              r"give it \(.+\)$"):
        hf.from_pretrained('someone/missing')
    assert hf.resolve('tomekkorbak/goofy_pasteur').endswith(os.path.join('snapshots', 'a' * 40))
