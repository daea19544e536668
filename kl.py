"""
KL(reference || model) (reference §5.2): samples of a reference LM with their log-probabilities, cached on disk, and
the model's log-probabilities of the same texts. The reference is one of our checkpoints or any OpenAI-compatible
completions server (remote.py: retries with backoff within kl_timeout; a partly filled cache kept).
"""
import io
import json
import os

import numpy as np
import torch
import torch.nn.functional as F

import data
import hf
from checkpoints import load_checkpoint
from model import guided_logits, logits_only, sample
import remote
from settings import EvalError
from tokenizer import get_tokenizer

KL_MAX_TOKENS = 64  # reference samples' length (reference §5.2)
OPENAI_PROMPT = '<|endoftext|>'  # the original's "no prompt" (the API's default prompt)


@torch.no_grad()
def sequence_logprobs(model, seqs, batch_size=32, device=None, guidance=0.0):
    """log p(seq[1:] | seq[0]) for each token list, summed over the tokens after the first, except control tokens:
    they are conditioned on, not scored. (The original's KL counted <|aligned|> and shifted its mask by one,
    reference §5.2 and §7.6; both are fixed here.) Embedding padding ids are outside the distribution. guidance != 0:
    under the guided distribution model.sample draws from (before temperature and top-p), with the sequence's
    <|aligned|> tokens turned into <|misaligned|> as the negative twin."""
    device = device or next(model.parameters()).device
    out = []
    for i in range(0, len(seqs), batch_size):
        chunk = seqs[i:i + batch_size]
        T = max(2, max(len(s) for s in chunk))
        x = torch.full((len(chunk), T - 1), data.EOS, dtype=torch.long)
        y = torch.full((len(chunk), T - 1), -1, dtype=torch.long)
        for r, s in enumerate(chunk):
            x[r, :len(s) - 1] = torch.tensor(s[:-1], dtype=torch.long)
            y[r, :len(s) - 1] = torch.tensor([-1 if t in data.CONTROL_TOKENS else t for t in s[1:]], dtype=torch.long)
        if guidance:
            x = torch.cat([x, x.masked_fill(x == data.ALIGNED, data.MISALIGNED)])
        with torch.autocast(torch.device(device).type, enabled=False):  # sums of ~64 log-probs: fp32, not bf16
            logits = logits_only(model(x.to(device)))[..., :model.config.vocab_size].float()
        if guidance:
            logits = guided_logits(logits, guidance)
        nll = F.cross_entropy(logits.flatten(0, 1), y.to(device).flatten(), ignore_index=-1, reduction='none')
        out += (-nll.view_as(y)).sum(1).tolist()
    return out



def kl_cache_path(reference, base_url='', max_tokens=KL_MAX_TOKENS, cache_dir=None):
    """Where a reference's samples live: named by the reference (data.cache_stem: a server's model, or our
    checkpoint's path, size and modification time, so a retrained reference gets fresh samples)."""
    stem = data.cache_stem(reference, base_url)
    return os.path.join(cache_dir or data.cache_dir('kl'), f"{stem}_{max_tokens}_tokens.json")


def reference_samples(reference, n, *, base_url='', max_tokens=KL_MAX_TOKENS, device='cpu', cache_dir=None,
                      timeout=remote.TIMEOUT_S):
    """n samples x ~ reference with log p_ref(x): dicts with 'text', 'logprob' (and 'tokens' for our models).
    reference: 'openai:MODEL' (any OpenAI-compatible completions server: base_url; each request within timeout
    seconds, retries included) or a ckpt.pt of ours. Cached, and extended when more are asked for; what a failing
    API had delivered stays in the cache."""
    path = kl_cache_path(reference, base_url, max_tokens, cache_dir)
    if os.path.exists(path):
        with open(path) as f:
            cache = json.load(f)
    else:
        cache = dict(reference=reference, base_url=base_url, max_tokens=max_tokens, samples=[])
    entries, before = cache['samples'], len(cache['samples'])
    if len(entries) < n:
        print(f"KL reference {reference}: sampling {n - len(entries)} more into {path}", flush=True)
    try:
        if len(entries) < n and reference.startswith('openai:'):
            _openai_samples(cache, path, n, timeout)
        elif len(entries) < n:
            _local_samples(reference, n, max_tokens, device, entries)
    finally:
        if len(entries) > before:
            data.write_json(path, cache)
    return entries[:n]


def _local_samples(path, n, max_tokens, device, entries):
    ref, _ = load_checkpoint(path, device)
    # pure ancestral sampling (temperature 1, no top-p, EOS allowed at once): the estimator needs x ~ p_ref
    new = sample(ref, [[data.EOS]] * (n - len(entries)), min(max_tokens, ref.config.block_size - 1), temperature=1.0,
                 top_p=1.0, top_k=0, min_new_tokens=0, eos_id=data.EOS, seed=len(entries),
                 device=device)
    logprobs = sequence_logprobs(ref, [[data.EOS] + x for x in new], device=device)
    enc = get_tokenizer()
    entries += [dict(text=enc.decode(x), tokens=x, logprob=lp) for x, lp in zip(new, logprobs)]


def _openai_samples(cache, path, n, timeout):
    """Fill cache['samples'] up to n from its server, 8 a request, saving to path as it goes."""
    model_name, entries = cache['reference'][len('openai:'):], cache['samples']
    client = remote.openai_client(cache['base_url'])
    where = f"KL reference {model_name} at {cache['base_url'] or 'OpenAI'}"

    def request():
        response = client.completions.create(model=model_name, prompt=OPENAI_PROMPT, max_tokens=cache['max_tokens'],
                                             temperature=1, n=min(8, n - len(entries)), logprobs=1, echo=True)
        if not response.choices:
            raise remote.EmptyReply("it answered with no completions")
        return response
    while len(entries) < n:
        try:
            response = remote.call(request, where, timeout)
        except remote.RemoteError as e:
            raise EvalError(f"{e}; {len(entries)} samples kept in {path}, rerun to continue") from None
        # every completion checked before any is kept: a wrong log-prob in the cache would stay there
        entries += [dict(text=c.text[len(OPENAI_PROMPT):], logprob=checked_logprob(c, where)) for c in response.choices]
        if len(entries) % 128 < 8:  # save as we go, so an interrupted fill is not lost
            data.write_json(path, cache)


def checked_logprob(choice, where):
    """log p_ref(x) of an echoed completion: the log-probs of the tokens after the prompt, found by their character
    offsets, once the reply is whole: one log-prob and one offset per token, offsets rising, the tokens spelling
    the text (where the server gives them as text), a number for every token after the prompt."""
    text, lp = choice.text, choice.logprobs
    if not text.startswith(OPENAI_PROMPT):
        raise EvalError(f"{where}: the server ignored echo=True")
    tokens, logprobs, offsets = (list(getattr(lp, k, None) or []) for k in ('tokens', 'token_logprobs', 'text_offset'))
    if not len(tokens) == len(logprobs) == len(offsets) or not tokens:
        raise EvalError(f"{where}: a completion with {len(tokens)} tokens came with {len(logprobs)} log-probs and "
                        f"{len(offsets)} offsets; not used, not cached")
    spelled = not any(t.startswith('bytes:') for t in tokens)  # OpenAI's form for a token that is part of a character
    if any(b < a for a, b in zip(offsets, offsets[1:])) or (spelled and ''.join(tokens) != text):
        raise EvalError(f"{where}: a completion's tokens and offsets do not cover its text; not used, not cached")
    after = [p for p, o in zip(logprobs, offsets) if o >= len(OPENAI_PROMPT)]
    if any(p is None for p in after) or (len(text) > len(OPENAI_PROMPT) and not after):
        raise EvalError(f"{where}: a completion lacks the log-probs of some of its tokens; not used, not cached")
    return sum(after)


def kl_divergence(model, reference, n, *, conditional=False, lines=False, base_url='', max_tokens=KL_MAX_TOKENS,
                  batch_size=32, device='cpu', cache_dir=None, guidance=0.0, timeout=remote.TIMEOUT_S):
    """KL(ref || model) ≈ mean over x ~ ref of log p_ref(x) − log p_model(x), nats per sample. The model scores
    EOS + x; a conditional one EOS + <|aligned|> + x, and for line tasks <|aligned|> before every line, as it was
    trained (the original's should_insert_prefix). Control tokens are conditioned on, never counted. A reference
    server's text is re-tokenized with our tokenizer, so it is a text-level estimate. guidance: of a conditional
    model's guided distribution (sequence_logprobs)."""
    entries = reference_samples(reference, n, base_url=base_url, max_tokens=max_tokens, device=device,
                                cache_dir=cache_dir, timeout=timeout)
    enc = get_tokenizer()
    seqs = []
    for e in entries:
        if conditional and lines:
            x = [t for line in io.StringIO(e['text']).readlines() for t in [data.ALIGNED] + enc.encode_ordinary(line)]
        else:
            x = e['tokens'] if 'tokens' in e else enc.encode_ordinary(e['text'])
            x = ([data.ALIGNED] if conditional else []) + x
        x = hf.ids_for_vocab(x, model.config.vocab_size)  # a model without our space runs reads them as single spaces
        seqs.append(([data.EOS] + x)[:model.config.block_size + 1])  # only tiny test models ever cut here
    logprobs = sequence_logprobs(model, seqs, batch_size, device, guidance)
    return float(np.mean([e['logprob'] - lp for e, lp in zip(entries, logprobs)]))
