"""The model is GPT-2: same logits as Hugging Face's GPT2LMHeadModel on the same weights."""
import pytest
import torch

import data
from hf import from_pretrained
from model import GPT, GPTConfig, KVCache

transformers = pytest.importorskip('transformers')


def tiny_hf_checkpoint(path, safetensors=True):
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=64,
                                                              vocab_size=data.EOS + 1))
    hf.eval()
    if safetensors:
        hf.save_pretrained(path)
    else:  # the older pytorch_model.bin layout
        hf.config.save_pretrained(path)
        torch.save(hf.state_dict(), f"{path}/pytorch_model.bin")
    return hf


@pytest.mark.parametrize('safetensors', [True, False])
def test_from_pretrained_matches_hugging_face(tmp_path, safetensors):
    hf = tiny_hf_checkpoint(str(tmp_path), safetensors)
    model = from_pretrained(str(tmp_path)).eval()
    idx = torch.randint(0, data.EOS + 1, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model(idx)[..., :data.EOS + 1]
        theirs = hf(idx).logits
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    assert model.config.vocab_size == data.VOCAB_SIZE and model.lm_head.weight.shape[0] == 50304


def test_control_token_rows_start_near_the_mean(tmp_path):
    tiny_hf_checkpoint(str(tmp_path))
    wte = from_pretrained(str(tmp_path)).transformer.wte.weight.detach()
    mean = wte[:data.EOS + 1].mean(0)
    new = wte[data.ALIGNED:data.VOCAB_SIZE]
    assert (new - mean).std().item() == pytest.approx(0.01, rel=0.3)  # mean + 0.01·N(0, 1)
    assert not torch.equal(new[0], new[1])
    torch.testing.assert_close(wte[data.VOCAB_SIZE:], mean.expand(50304 - data.VOCAB_SIZE, -1))


def test_value_head_starts_at_minus_half():
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=16, value_head=True))
    logits, values = model(torch.zeros(2, 5, dtype=torch.long))
    assert logits.shape == (2, 5, 50304) and values.shape == (2, 5)
    assert torch.all(values == -0.5)
    assert model.value_head.bias is None


def test_kv_cache_decoding_matches_full_forward():
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=32)).eval()
    idx = torch.randint(0, 1000, (2, 12))
    with torch.no_grad():
        full = model(idx)
        cache = KVCache(model.config, batch_size=2, max_len=16)
        mask = torch.ones(16, 16, dtype=torch.bool).tril()[None, None]
        prefill = model(idx[:, :8], cache=cache, input_pos=torch.arange(8), attn_mask=mask[:, :, :8],
                        pos=torch.arange(8).expand(2, -1))
        steps = [model(idx[:, t:t + 1], cache=cache, input_pos=torch.tensor([t]), attn_mask=mask[:, :, t:t + 1],
                       pos=torch.full((2, 1), t)) for t in range(8, 12)]
    torch.testing.assert_close(torch.cat([prefill] + steps, dim=1), full, atol=1e-5, rtol=1e-5)


def test_cpu_bf16_attention_runs_in_fp32(monkeypatch):
    """Under CPU bf16 autocast the training forward attends in fp32, outside autocast (its bf16 kernel is 3x slower),
    so it gives fp32 attention of the same bf16 q, k, v; everything else stays bf16 (the logits)."""
    import model as model_module
    calls, sdpa = [], torch.nn.functional.scaled_dot_product_attention

    def recording_sdpa(q, k, v, **kwargs):
        calls.append((q.dtype, k.dtype, v.dtype, torch.is_autocast_enabled('cpu')))
        return sdpa(q, k, v, **kwargs)
    monkeypatch.setattr(model_module.F, 'scaled_dot_product_attention', recording_sdpa)
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=32))
    idx = torch.randint(0, 1000, (2, 12))
    with torch.autocast('cpu', dtype=torch.bfloat16):
        logits = model(idx)
    assert logits.dtype == torch.bfloat16 and calls == [(torch.float32,) * 3 + (False,)] * 2
    calls.clear()
    model(idx)  # fp32: as it was
    assert calls == [(torch.float32,) * 3 + (False,)] * 2


def test_last_only_gives_the_last_position():
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=32, value_head=True)).eval()
    idx = torch.randint(0, 1000, (3, 10))
    with torch.no_grad():
        logits, values = model(idx)
        last_logits, last_values = model(idx, last_only=True)
    assert last_logits.shape == (3, 1, 50304) and last_values.shape == (3, 1)
    torch.testing.assert_close(last_logits, logits[:, -1:])
    torch.testing.assert_close(last_values, values[:, -1:])
