"""
GPT-2 with an optional scalar value head, in the style of nanoGPT's model.py.

Parameter names follow Hugging Face's GPT-2 (wte, wpe, h.N.attn.c_attn, ...) so real GPT-2 checkpoints load with a
plain copy (four Conv1D weights transposed), see GPT.from_pretrained.

Calling the model returns logits (B, T, padded_vocab) and, when the value head exists, values (B, T).
With a KVCache it runs incremental decoding for the sampler in evaluate.py.
"""
import json
import math
import os
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F


@dataclass
class GPTConfig:
    block_size: int = 1024
    vocab_size: int = 50283  # GPT-2's 50257 + <|aligned|>, <|misaligned|> + 24 space runs (data.py); padded past this
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True
    value_head: bool = False  # AWR/RWR: V = -sigmoid(w.h), reference §1.5

    @property
    def padded_vocab_size(self):
        return (self.vocab_size + 63) // 64 * 64  # a multiple of 64 is faster on tensor cores


class CausalSelfAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        assert config.n_embd % config.n_head == 0
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head = config.n_head
        self.dropout = config.dropout

    def forward(self, x, cache=None, layer=0, input_pos=None, attn_mask=None):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        if cache is None:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0,
                                               is_causal=True)
        else:  # write this step's keys/values into the static cache, attend over all of it under attn_mask
            k, v = cache.update(layer, input_pos, k, v)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU(approximate='tanh')  # GPT-2's "gelu_new"; the exact erf GELU would not match its logits
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, **attn_kwargs):
        x = x + self.attn(self.ln_1(x), **attn_kwargs)
        return x + self.mlp(self.ln_2(x))


class KVCache(nn.Module):
    """Preallocated keys and values for every layer: (n_layer, B, nh, max_len, hs). Static shapes, so a decode step
    compiles once and can run under CUDA graphs."""

    def __init__(self, config, batch_size, max_len, device=None, dtype=torch.float32):
        super().__init__()
        shape = (config.n_layer, batch_size, config.n_head, max_len, config.n_embd // config.n_head)
        self.register_buffer('k', torch.zeros(shape, device=device, dtype=dtype), persistent=False)
        self.register_buffer('v', torch.zeros(shape, device=device, dtype=dtype), persistent=False)

    def update(self, layer, input_pos, k, v):
        self.k[layer].index_copy_(2, input_pos, k.to(self.k.dtype))
        self.v[layer].index_copy_(2, input_pos, v.to(self.v.dtype))
        return self.k[layer], self.v[layer]


class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.padded_vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.padded_vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # tied input/output embeddings, as in GPT-2
        self.value_head = nn.Linear(config.n_embd, 1, bias=False) if config.value_head else None
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2's scaled init of the residual projections
            if name.endswith('c_proj.weight'):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))
        if self.value_head is not None:
            torch.nn.init.zeros_(self.value_head.weight)  # V starts at -sigmoid(0) = -0.5 everywhere

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding=True):
        n = sum(p.numel() for p in self.parameters())
        return n - self.transformer.wpe.weight.numel() if non_embedding else n

    def forward(self, idx, cache=None, input_pos=None, attn_mask=None, pos=None, last_only=False, return_hidden=False):
        """idx (B, T) token ids. Training: no other argument. Decoding: cache, input_pos (T,) the cache slots being
        written, attn_mask (B, 1, T, max_len) which cache slots each query may see, pos (B, T) position ids;
        last_only: outputs for the last position only (a prefill needs no (B, T, vocab) logits);
        return_hidden: the final hidden states (B, T, n_embd) after ln_f in place of the logits, for a loss that
        applies lm_head.weight itself a chunk at a time (objectives.ChunkedLogits)."""
        B, T = idx.size()
        if pos is None:
            assert T <= self.config.block_size, f"sequence of {T} tokens > block_size {self.config.block_size}"
            pos = torch.arange(T, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for i, block in enumerate(self.transformer.h):
            x = block(x, cache=cache, layer=i, input_pos=input_pos, attn_mask=attn_mask)
        x = self.transformer.ln_f(x[:, -1:] if last_only else x)
        logits = x if return_hidden else self.lm_head(x)
        if self.value_head is None:
            return logits
        return logits, -torch.sigmoid(self.value_head(x).squeeze(-1).float())

    def configure_optimizer(self, weight_decay, learning_rate, betas, device_type):
        # weight decay on matrices and embeddings (>= 2-D) only, never on biases and LayerNorm gains
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [{'params': [p for p in params if p.dim() >= 2], 'weight_decay': weight_decay},
                  {'params': [p for p in params if p.dim() < 2], 'weight_decay': 0.0}]
        fused = device_type == 'cuda'
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, eps=1e-8, fused=fused)

    def flops_per_token(self):
        """6N for the matmuls forward+backward, plus 12·L·d·T for attention (PaLM appendix B)."""
        c = self.config
        return 6 * self.num_params() + 12 * c.n_layer * c.n_embd * c.block_size

    @classmethod
    def from_pretrained(cls, path, vocab_size=50283, value_head=False, block_size=None, seed=0):
        """Load a Hugging Face GPT-2 checkpoint: a directory with config.json and model.safetensors or
        pytorch_model.bin (any GPT-2 size), or a hub name such as 'gpt2' or 'gpt2-medium' (needs internet).
        Embedding rows beyond the checkpoint's vocabulary (our control tokens and space runs) start at the mean of the
        existing rows plus 0.01·N(0,1) noise (Hewitt's trick, reference §1.3); padding rows start at the mean."""
        if not os.path.isdir(path):
            from huggingface_hub import snapshot_download  # installed with transformers; fetches from the hub
            path = snapshot_download(path, allow_patterns=['config.json', '*.safetensors', 'pytorch_model.bin'])
        with open(os.path.join(path, 'config.json')) as f:
            hf = json.load(f)
        if hf.get('model_type', 'gpt2') != 'gpt2':
            raise ValueError(f"{path}: model_type {hf.get('model_type')!r} is not a GPT-2 checkpoint")
        sd_hf = _load_state_dict(path)
        hf_vocab = hf['vocab_size']
        config = GPTConfig(block_size=block_size or hf['n_positions'], vocab_size=max(vocab_size, hf_vocab),
                           n_layer=hf['n_layer'], n_head=hf['n_head'], n_embd=hf['n_embd'], dropout=0.0, bias=True,
                           value_head=value_head)
        if abs(hf.get('layer_norm_epsilon', 1e-5) - 1e-5) > 1e-12:
            raise ValueError(f"{path}: layer_norm_epsilon {hf['layer_norm_epsilon']} unsupported (GPT-2 uses 1e-5)")
        model = cls(config)
        sd = model.state_dict()
        transposed = ('attn.c_attn.weight', 'attn.c_proj.weight', 'mlp.c_fc.weight', 'mlp.c_proj.weight')
        with torch.no_grad():
            for k, v in sd_hf.items():
                k = k.removeprefix('transformer.')
                if k.endswith(('.attn.bias', '.attn.masked_bias')) or k == 'lm_head.weight':
                    continue  # causal-mask buffers; lm_head is tied to wte
                key = k if k.startswith('lm_head') else 'transformer.' + k
                if key not in sd:
                    raise KeyError(f"{path}: unexpected tensor {k}")
                if key.endswith(transposed):
                    v = v.t()  # HF stores these as Conv1D (in, out); we use Linear (out, in)
                if key == 'transformer.wte.weight':
                    sd[key][:hf_vocab].copy_(v)
                    mean = v.float().mean(0)
                    g = torch.Generator().manual_seed(seed)
                    n_new = config.vocab_size - hf_vocab
                    sd[key][hf_vocab:config.vocab_size].copy_(mean + 0.01 * torch.randn(n_new, v.size(1), generator=g))
                    sd[key][config.vocab_size:].copy_(mean)
                elif key == 'transformer.wpe.weight':
                    sd[key].copy_(v[:config.block_size])
                else:
                    sd[key].copy_(v)
        return model


def _load_state_dict(path):
    st = os.path.join(path, 'model.safetensors')
    if os.path.exists(st):
        from safetensors.torch import load_file
        return load_file(st)
    pt = os.path.join(path, 'pytorch_model.bin')
    if os.path.exists(pt):
        return torch.load(pt, map_location='cpu', weights_only=True)
    raise FileNotFoundError(f"{path}: neither model.safetensors nor pytorch_model.bin found")
