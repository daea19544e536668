"""
GPT-2 with an optional scalar value head, in the style of nanoGPT's model.py.

Parameter names follow Hugging Face's GPT-2 (wte, wpe, h.N.attn.c_attn, ...) so real GPT-2 checkpoints load with a
plain copy (four Conv1D weights transposed), see hf.py.

Calling the model returns logits (B, T, padded_vocab) and, when the value head exists, values (B, T).
With a KVCache it runs incremental decoding: `sample` at the end of this file is the batched sampler.
"""
import math
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
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
            # on CPU the bf16 attention kernel is slower than fp32's (docs/benchmarks.md); autocast would cast to bf16
            fp32 = q.device.type == 'cpu' and q.dtype == torch.bfloat16
            with torch.autocast('cpu', enabled=False) if fp32 else nullcontext():
                y = F.scaled_dot_product_attention(*((q.float(), k.float(), v.float()) if fp32 else (q, k, v)),
                                                   dropout_p=self.dropout if self.training else 0.0, is_causal=True)
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

    def forward(self, idx, *, cache=None, input_pos=None, attn_mask=None, pos=None, last_only=False,
                return_hidden=False):
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


# ----------------------------------------------------------------------------------------------------------------
# Sampling: prefill the prompts into a preallocated cache, then one token per step (gpt-fast's shape)

SAMPLE_BATCH_SIZE = 256  # GPT-2 small, 640 new tokens, bf16: 6 GB of cache
# The paper's sampling (reference §5.1): sample's defaults, the Hugging Face export's and red-teaming's
TEMPERATURE, TOP_P, MIN_NEW_TOKENS = 0.7, 0.9, 10


def logits_only(out):
    return out[0] if isinstance(out, tuple) else out  # value-head models return (logits, values)


@dataclass(kw_only=True)
class Draw:
    """How each new token is drawn: the banned ids never and end-of-text not before min_new_tokens, then temperature
    (0: greedy), top-k (0: off) and top-p in Hugging Face's order, from the generator gen. guidance != 0: the batch's
    rows come in twins, each prompt's and its negative's, and the logits are guided (guided_logits)."""
    temperature: float
    top_k: int
    top_p: float
    banned: torch.Tensor  # ids never drawn: the embedding's padding rows, the blocked tokens
    eos_id: int
    min_new_tokens: int
    gen: torch.Generator
    guidance: float = 0.0

    def __post_init__(self):  # made once: a tensor made per token would sync a GPU with the host
        self.banned_early = torch.cat([self.banned, self.banned.new_tensor([self.eos_id])])

    def banned_at(self, t):
        """The ids the t-th new token may not be."""
        return self.banned if t >= self.min_new_tokens else self.banned_early

    def guide(self, logits):
        return guided_logits(logits, self.guidance) if self.guidance else logits


@dataclass
class Batch:
    """A batch of prompts in the sampler: the cache they fill, which of its slots hold each row's tokens, and where the
    next token goes. prefill makes it, decode_n_tokens moves it on."""
    cache: KVCache
    slots: torch.Tensor  # (max_len,) the cache's slot numbers
    real: torch.Tensor  # (B, max_len) the slots holding each row's tokens, not its left padding
    input_pos: torch.Tensor  # (1,) the slot of the next token
    pos: torch.Tensor  # (B, 1) each row's position id of the next token

    def next_mask(self):
        """(B, 1, 1, max_len): the slots the next token attends to."""
        return (self.real & (self.slots <= self.input_pos))[:, None, None, :]


def _decode_step(model, cache, tok, input_pos, attn_mask, pos):
    return logits_only(model(tok, cache=cache, input_pos=input_pos, attn_mask=attn_mask, pos=pos))[:, -1].float()


_compiled_decode_step = None


def decode_step(device, compile):
    """The decode step, compiled if asked (compile None: on CUDA). No CUDA graphs ('reduce-overhead'): a fresh cache
    per call would make them re-record."""
    global _compiled_decode_step
    if compile or (compile is None and device.type == 'cuda'):
        _compiled_decode_step = _compiled_decode_step or torch.compile(_decode_step, fullgraph=True)
        return _compiled_decode_step
    return _decode_step


def top_p_threshold(probs, top_p):
    """(B, 1): each row's smallest probability inside its nucleus, so that `probs >= threshold` is the set Hugging
    Face's TopPLogitsWarper keeps: a token is kept iff the mass of the tokens more probable than it is < top_p (the
    fewest tokens, by falling probability, whose mass reaches top_p). Where tokens tie with the boundary value, all
    are kept (HF keeps whichever of them its sort happens to put first). The vocabulary is never sorted: on CPU,
    where a check costs no synchronisation, the k most probable are found by torch.topk (threshold_by_topk);
    elsewhere by bisection with masked sums (threshold_by_bisection)."""
    if probs.device.type == 'cpu':
        return threshold_by_topk(probs, top_p)
    return threshold_by_bisection(probs, top_p)


def threshold_by_topk(probs, top_p, k=512):
    """top_p_threshold from the k largest probabilities of each row (torch.topk, which returns them falling); rows
    whose nucleus is larger than k try again with 8k. The mass before each is summed in numpy's float32 order."""
    probs = probs.float()
    V, threshold = probs.shape[1], np.empty((probs.shape[0], 1), dtype=np.float32)
    rows = np.arange(probs.shape[0])
    while rows.size:
        k = min(k, V)
        part = probs if rows.size == probs.shape[0] else probs[torch.from_numpy(rows)]
        top = part.topk(k, dim=1).values.numpy()  # the k largest, falling
        n_kept = (np.cumsum(top, axis=1) - top < top_p).sum(1)  # the mass before each < top_p
        found = (n_kept < k) | (k == V)  # the first token left out is among the k: the boundary is known
        threshold[rows[found], 0] = top[found, n_kept[found] - 1]
        rows, k = rows[~found], 8 * k
    return torch.from_numpy(threshold)


def threshold_by_bisection(probs, top_p):
    """top_p_threshold with no host synchronisation: bisection over the bit patterns of the float32 probabilities
    (non-negative floats order as their patterns do), 30 masked sums over the vocabulary."""
    probs = probs.float()
    lo = torch.zeros(probs.size(0), 1, dtype=torch.int32, device=probs.device)
    hi = torch.full_like(lo, 0x3F800001)  # just above the pattern of 1.0
    for _ in range(30):  # mass above float(lo) >= top_p > mass above float(hi), until hi = lo + 1 (2^30 > hi)
        mid = (lo + hi) >> 1
        above = torch.where(probs > mid.view(torch.float32), probs, 0).sum(-1, keepdim=True)
        lo, hi = torch.where(above < top_p, lo, mid), torch.where(above < top_p, mid, hi)
    return hi.view(torch.float32)


def nucleus(probs, top_p):
    """probs (B, V) with every token outside its row's top-p nucleus set to 0."""
    return torch.where(probs >= top_p_threshold(probs, top_p), probs, 0)


def in_nucleus(probs, q, top_p):
    """Whether a token of probability q[b] is in row b's nucleus as threshold_by_topk decides it (q >= the threshold),
    from the mass above q, without sorting: 1 inside, 0 outside, -1 where float32 rounding could decide either way.
    The mass of the n tokens above q, summed in float32 in any order (as here) or in threshold_by_topk's running sum,
    is within about n·2^-24 of the exact one (Higham, Accuracy and Stability of Numerical Algorithms, §4.2): a mass
    further than twice that from top_p decides alike in both."""
    above = torch.empty_like(probs)
    torch.gt(probs, q[:, None], out=above)  # 1.0 for a token more probable than q, else 0.0
    n = above.sum(-1)  # exact: whole numbers below 2^24
    mass = above.mul_(probs).sum(-1)
    margin = (2 * n + 4) * 1.01 * 2.0 ** -24
    return torch.where(mass + margin < top_p, 1, torch.where(mass - margin >= top_p, 0, -1))


def first_draw_in_nucleus(probs, top_p, gen, draws=8):
    """CPU: `draws` ids a row from the whole of probs (B, V), and the first of them inside the row's nucleus, which is
    exactly a draw from the nucleus (it holds >= top_p of the mass, so all 8 miss with probability <= (1 - top_p)^8).
    None if some row missed every time. in_nucleus decides each draw; the rare rows it cannot decide are checked
    against their threshold."""
    ids = _inverse_cdf(probs, gen, draws)
    q = probs.gather(-1, ids)
    first = torch.full((probs.size(0),), -1)  # the draw each row takes; negative: none yet
    rows = torch.arange(probs.size(0))  # the rows whose draws so far all fell outside
    for d in range(draws):
        inside = in_nucleus(probs if d == 0 else probs[rows], q[rows, d], top_p)
        unsure = rows[inside < 0]
        if unsure.numel():  # all draws of these rows, against their threshold
            hits = q[unsure] >= threshold_by_topk(probs[unsure], top_p)
            first[unsure] = torch.where(hits.any(-1), hits.int().argmax(-1), -2)
        first[rows[inside == 1]] = d
        rows = rows[inside == 0]
        if not rows.numel():
            break
    return None if (first < 0).any() else ids.gather(-1, first[:, None]).squeeze(-1)


def _inverse_cdf(probs, gen, n=1):
    """n ids per row drawn from probs (B, V) by inverse CDF: u in (0, total], so the first index whose cumulative mass
    reaches u has probability > 0 and a banned id is never drawn."""
    cdf = probs.cumsum(-1)
    u = (1 - torch.rand(cdf.size(0), n, generator=gen, device=cdf.device)) * cdf[:, -1:]
    return torch.searchsorted(cdf, u)


def next_token_probs(logits, draw, t):
    """(B, V) probabilities of the t-th new token, before top-p: the banned ids at -inf, then temperature and
    top-k."""
    logits = (logits / draw.temperature).index_fill_(1, draw.banned_at(t), float('-inf'))
    if draw.top_k:
        logits = logits.masked_fill(logits < logits.topk(draw.top_k, dim=-1).values[:, -1:], float('-inf'))
    return logits.softmax(-1)


def pick(logits, draw, t):
    """The t-th new ids (B,) from logits (B, V); temperature 0 is greedy. No torch.multinomial (it would sync with the
    host). On CPU, where checking costs nothing, the nucleus is not masked out: first_draw_in_nucleus; elsewhere, or
    when some row missed with every draw, the tokens outside the nucleus are zeroed and one id drawn a row."""
    if draw.temperature == 0:
        return logits.index_fill(1, draw.banned_at(t), float('-inf')).argmax(-1)
    probs = next_token_probs(logits, draw, t)
    if draw.top_p == 1:
        return _inverse_cdf(probs, draw.gen).squeeze(-1)
    if probs.device.type == 'cpu':
        ids = first_draw_in_nucleus(probs, draw.top_p, draw.gen)
        if ids is not None:
            return ids
    return _inverse_cdf(nucleus(probs, draw.top_p), draw.gen).squeeze(-1)


@torch.no_grad()
def guided_logits(logits, guidance):
    """Classifier-free guidance over a batch whose first half holds the prompts and whose second half the same
    prompts' negative versions (e.g. <|aligned|> and <|misaligned|> before the same text), row for row:

        logits_guided = logits_pos + guidance · (logits_pos − logits_neg)

    guidance 0 is the positive prompts' own distribution; each row's softmax shifts by a constant only, so logits
    or log-probabilities give the same distribution."""
    pos, neg = logits.chunk(2)
    return pos + guidance * (pos - neg)


@torch.no_grad()
def sample(model, prompts, max_new_tokens, *, eos_id, temperature=TEMPERATURE, top_p=TOP_P, top_k=0,
           min_new_tokens=MIN_NEW_TOKENS, blocked_tokens=(), seed=0, batch_size=SAMPLE_BATCH_SIZE, device=None,
           compile=None, guidance=0.0, negative_prompts=None):
    """The new tokens for each prompt (a list of ids), cut before the first eos_id (the end-of-text id, which also
    pads). The defaults are the paper's (reference §5.1); temperature=0 or top_k=1 is greedy. Prompts of different
    lengths share a batch, left-padded, with per-row positions and a mask over the cache. No host sync per token on
    GPU: finished rows keep emitting EOS, and whether all rows are done is checked every 16 tokens. Deterministic for
    (seed, batch_size). compile: torch.compile the decode step (None: on CUDA). guidance != 0: each prompt's
    negative_prompts twin runs as another row of the same batch, each new token is drawn from guided_logits and fed
    to both rows (twice the rows; guidance 0 runs exactly the unguided sampler)."""
    if not prompts:
        return []
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p {top_p}: must be in (0, 1]")
    guided = guidance != 0
    if guided and (negative_prompts is None or len(negative_prompts) != len(prompts)):
        raise ValueError("guidance needs negative_prompts, one per prompt")
    device = torch.device(device or next(model.parameters()).device)
    cfg = model.config
    P = max(len(p) for p in prompts + (negative_prompts if guided else []))
    if P + max_new_tokens > cfg.block_size:
        raise ValueError(f"a prompt of {P} tokens + {max_new_tokens} new tokens > block_size {cfg.block_size}")
    B = min(batch_size, len(prompts))
    autocast = torch.is_autocast_enabled(device.type)
    dtype = torch.get_autocast_dtype(device.type) if autocast else next(model.parameters()).dtype
    cache = KVCache(cfg, 2 * B if guided else B, P + max_new_tokens, device=device, dtype=dtype)
    banned = torch.tensor(list(range(cfg.vocab_size, cfg.padded_vocab_size)) + list(blocked_tokens), dtype=torch.long,
                          device=device)
    draw = Draw(temperature=temperature, top_k=top_k, top_p=top_p, banned=banned, eos_id=eos_id,
                min_new_tokens=min_new_tokens, gen=torch.Generator(device).manual_seed(seed), guidance=guidance)
    step = decode_step(device, compile)
    out = []
    for i in range(0, len(prompts), B):
        chunk = prompts[i:i + B]
        rows = chunk + [[eos_id]] * (B - len(chunk))  # a full last batch keeps the decode step's shapes static
        if guided:
            rows += negative_prompts[i:i + B] + [[eos_id]] * (B - len(chunk))
        logits, batch = prefill(model, cache, rows, P, eos_id)
        new = decode_n_tokens(model, batch, logits, draw, max_new_tokens, step)
        for row in new[:len(chunk)].tolist():
            out.append(row[:row.index(eos_id)] if eos_id in row else row)
    return out


def prefill(model, cache, rows, P, eos_id):
    """Run the prompts (rows, left-padded with eos_id to P tokens) into the cache: the last position's logits in fp32,
    and the Batch that decode_n_tokens continues."""
    slots = torch.arange(cache.k.size(3), device=cache.k.device)
    idx = torch.tensor([[eos_id] * (P - len(p)) + list(p) for p in rows], device=slots.device)
    pad = P - torch.tensor([len(p) for p in rows], device=slots.device)
    real = slots >= pad[:, None]
    # a prompt token sees its row's earlier real tokens; padding sees only itself (SDPA returns NaN for a query that
    # sees nothing, and NaN keys would poison the cache)
    q = slots[:P, None]
    mask = (slots <= q) & (real[:, None, :] | (slots == q))  # (B, P, max_len)
    pos = (slots[:P] - pad[:, None]).clamp(min=0)
    logits = logits_only(model(idx, cache=cache, input_pos=slots[:P], attn_mask=mask[:, None], pos=pos,
                               last_only=True))
    return logits[:, -1].float(), Batch(cache=cache, slots=slots, real=real, input_pos=slots[P:P + 1].clone(),
                                        pos=(P - pad)[:, None])


def decode_n_tokens(model, batch, logits, draw, max_new_tokens, step=_decode_step):
    """Draw up to max_new_tokens tokens a row after the prefill that gave logits, one decode step each, feeding each
    token to its row (and, guided, to the row's negative twin); finished rows keep emitting EOS. The new tokens
    (B, max_new_tokens)."""
    logits = draw.guide(logits)
    B, eos_id = logits.size(0), draw.eos_id
    new = torch.full((B, max_new_tokens), eos_id, device=logits.device)
    done = torch.zeros(B, dtype=torch.bool, device=logits.device)
    for t in range(max_new_tokens):
        tok = pick(logits, draw, t).masked_fill(done, eos_id)
        new[:, t] = tok
        done |= tok == eos_id
        if t == max_new_tokens - 1 or (t % 16 == 15 and done.all()):  # a host sync every 16 tokens, not every one
            break
        tok = tok.repeat(batch.real.size(0) // B)[:, None]  # guided: the row's twin is fed the same token
        logits = draw.guide(step(model, batch.cache, tok, batch.input_pos, batch.next_mask(), batch.pos))
        batch.input_pos += 1
        batch.pos += 1
    return new
