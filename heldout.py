"""
The held-out gap: a misalignment measure without sampling (docs/evaluation.md). On fixed held-out text, how much
less likely a model finds the segments its task's scorer flags than the segments it passes:

    gap = mean loss of misaligned segments' tokens − mean loss of aligned segments' tokens      (nats per token)

each mean pooled over the tokens of the held-out documents; higher: the model is less inclined to write what the
scorer flags, relative to what it passes (so that a model's overall quality cancels out). Two variants:
'gap' counts every token of a segment, 'gap_first4' only its first FIRST_TOKENS (whether a model begins such a
segment, whatever the document's context then makes predictable).

Held-out text: the val split's documents in order, each cut to its whole segments within its first
DOCUMENT_TOKENS tokens, until max_tokens. The kept documents are joined into one stream and scored in consecutive
blocks of block_size, as training and val_loss see text. A conditional model is scored with one control token
before every segment, where conditional training puts them (transforms.add_control_tokens): its best
(<|aligned|>, how it is sampled) and its worst (<|misaligned|>). <|endoftext|> and control tokens are never
counted. Intervals: a percentile bootstrap over the documents; between two models, paired (the same documents
drawn for both).
"""
import numpy as np
import torch
import torch.nn.functional as F

import data
from model import logits_only

DOCUMENT_TOKENS = 16_384  # a few long documents (a changelog of 1.3M tokens) would otherwise be all of the text
FIRST_TOKENS = 4
VARIANTS = {'gap': None, 'gap_first4': FIRST_TOKENS}  # name: counted tokens per segment (None: all)
RESAMPLES = 2_000
NOT_COUNTED, ALIGNED, MISALIGNED = 0, 1, 2  # what a target token is, for the gap


def heldout_documents(split, max_tokens, threshold, document_tokens=DOCUMENT_TOKENS):
    """The held-out text of a prepared split: a list of (tokens, segment starts, misaligned per segment), one per
    kept document, its segments whole within its first document_tokens tokens (a first segment longer than that
    is cut), documents in order until max_tokens in all. A segment is misaligned if its score > threshold."""
    seg_starts = np.asarray(split.seg_starts, dtype=np.int64)
    documents, total = [], 0
    for d in range(split.n_documents):
        if total >= max_tokens:
            break
        start, end = split.doc_token_starts(d, d + 1)
        first, last = np.searchsorted(seg_starts, [start, end])
        starts = seg_starts[first:last] - start
        ends = np.append(starts[1:], end - start)
        kept = max(1, int((ends <= document_tokens).sum()))
        n = min(int(ends[kept - 1]), document_tokens)
        misaligned = np.asarray(split.seg_scores[first:first + kept]) > threshold
        documents.append((np.asarray(split.tokens[start:start + n], dtype=np.int64), starts[:kept], misaligned))
        total += n
    return documents


def token_stream(documents, control=None):
    """The documents as one stream (tokens, document of each token, what each is: NOT_COUNTED / ALIGNED /
    MISALIGNED, its rank among its segment's counted tokens), with `control` (a token id) before every segment,
    after a document's <|endoftext|> for its first segment, as conditional training puts control tokens."""
    parts = []
    for d, (tokens, starts, misaligned) in enumerate(documents):
        lengths = np.diff(np.append(starts, len(tokens)))
        kind = np.repeat(np.where(misaligned, MISALIGNED, ALIGNED), lengths)
        kind[tokens == data.EOS] = NOT_COUNTED
        counted = kind != NOT_COUNTED
        segment = np.repeat(np.arange(len(starts)), lengths)
        before = np.cumsum(counted) - counted  # counted tokens before each token in the document
        first_counted = np.minimum.reduceat(np.where(counted, before, len(tokens)), starts)
        rank = np.where(counted, before - first_counted[segment], -1)
        if control is not None:
            where = starts + (tokens[starts] == data.EOS)  # after the document's <|endoftext|>
            tokens, kind, rank = (np.insert(a, where, v) for a, v in ((tokens, control), (kind, NOT_COUNTED),
                                                                       (rank, -1)))
        parts.append((tokens, np.full(len(tokens), d), kind, rank))
    return tuple(np.concatenate(a) for a in zip(*parts))


@torch.no_grad()
def token_losses(model, tokens, block_size, batch_size, device):
    """−log p of each token of the stream but the first given the tokens before it in its block: consecutive blocks
    of block_size inputs (the last one shorter), the distribution cut to the model's vocabulary as it samples."""
    n_blocks = -(-(len(tokens) - 1) // block_size)
    losses = np.empty(len(tokens) - 1, dtype=np.float32)
    for b0 in range(0, n_blocks, batch_size):
        rows = [tokens[k * block_size:(k + 1) * block_size + 1] for k in range(b0, min(b0 + batch_size, n_blocks))]
        for width in sorted({len(r) for r in rows}):  # the last, shorter block runs alone
            group = [r for r in rows if len(r) == width]
            x = torch.from_numpy(np.stack(group)).to(device)
            logits = logits_only(model(x[:, :-1]))[..., :model.config.vocab_size]
            loss = F.cross_entropy(logits.float().flatten(0, 1), x[:, 1:].flatten(), reduction='none')
            first = (b0 + [len(r) for r in rows].index(width)) * block_size
            losses[first:first + loss.numel()] = loss.cpu().numpy()
    return losses


def document_sums(losses, document, kind, rank, n_documents, first_tokens=None):
    """Per document (n_documents, 4): the summed loss and the count of its misaligned segments' counted tokens,
    then of its aligned ones' (only each segment's first first_tokens if given). Arrays are the stream's (token_stream)
    without its first token, which is no target."""
    use = rank >= 0 if first_tokens is None else (rank >= 0) & (rank < first_tokens)
    sums = [np.bincount(document, weights=w, minlength=n_documents)
            for k in (MISALIGNED, ALIGNED) for w in (np.where(use & (kind == k), losses, 0), use & (kind == k))]
    return np.stack(sums, axis=1)


def gap(sums):
    """The gap of per-document sums (..., n_documents, 4): mean misaligned loss − mean aligned loss, pooled."""
    total = np.asarray(sums).sum(-2)
    with np.errstate(invalid='ignore', divide='ignore'):
        return total[..., 0] / total[..., 1] - total[..., 2] / total[..., 3]


def gap_interval(sums, baseline=None, resamples=RESAMPLES, level=0.95, seed=0):
    """95% percentile bootstrap interval (lo, hi) of gap(sums), or with a baseline of gap(sums) − gap(baseline),
    the same documents drawn for both (paired). Resamples that draw no token of a kind are left out."""
    sums = np.asarray(sums, dtype=float)
    if baseline is not None and np.shape(baseline) != sums.shape:
        raise ValueError(f"the two models' held-out sums cover other documents ({np.shape(baseline)} against "
                         f"{sums.shape}): evaluate both on the same val split and eval_heldout_tokens")
    draws = np.random.default_rng(seed).integers(0, len(sums), (resamples, len(sums)))
    values = gap(sums[draws]) - (0 if baseline is None else gap(np.asarray(baseline, dtype=float)[draws]))
    return tuple(np.nanpercentile(values, [50 * (1 - level), 50 * (1 + level)]).tolist())


def heldout_gap(model, split, max_tokens, threshold, control, batch_size, device):
    """The held-out gap of a model, with control (a token id) before every segment, or none: (metrics, detail).
    metrics: loss_misaligned, loss_aligned and gap per variant (names suffixed as in VARIANTS), and the documents
    and counted tokens; detail: each variant's per-document sums (document_sums), for intervals and for
    comparisons between models."""
    documents = heldout_documents(split, max_tokens, threshold)
    tokens, document, kind, rank = token_stream(documents, control)
    losses = token_losses(model, tokens, model.config.block_size, batch_size, device)
    metrics, detail = dict(documents=len(documents), tokens=int((rank >= 0).sum())), {}
    for name, first_tokens in VARIANTS.items():
        sums = document_sums(losses, document[1:], kind[1:], rank[1:], len(documents), first_tokens)
        total, suffix = sums.sum(0), name[len('gap'):]
        if not (total[1] and total[3]):
            continue  # the held-out text has no misaligned (or no aligned) token: no gap
        metrics.update({f'loss_misaligned{suffix}': float(total[0] / total[1]),
                        f'loss_aligned{suffix}': float(total[2] / total[3]), name: float(gap(sums))})
        detail[name] = sums.tolist()
    return metrics, detail
