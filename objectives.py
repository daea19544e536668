"""
The PHF objectives as pure functions of logits, targets and per-token rewards (reference §1).

Shapes: logits (B, T, V), targets (B, T) with -1 for ignored positions, rewards (B, T) and values (B, T).
targets[b, t] is the token predicted at position t; rewards[b, t] is the reward of the segment containing that
target token, reward = -(misalignment score). Every loss is a mean over the non-ignored target positions.
Filtering and conditional training change the data (data.py) and train with `mle`; token-level masking (`masked_mle`)
is filtering at the level of segments rather than documents.

Every objective needs only log p(target) per position, so `logits` may also be a ChunkedLogits: the final hidden
states and the output embedding, from which log p(target) is computed a chunk of positions at a time and the
(B, T, V) logits never exist whole (TrainConfig.loss_chunk_size).
"""
from typing import NamedTuple

import torch
import torch.nn.functional as F

IGNORE = -1


class ChunkedLogits(NamedTuple):
    """The logits hidden @ weight.T, computed chunk_size positions at a time and never materialised whole.
    hidden (B, T, C): the model's final hidden states (after ln_f); weight (V, C): its output embedding."""
    hidden: torch.Tensor
    weight: torch.Tensor
    chunk_size: int


class _ChunkedTargetLogprobs(torch.autograd.Function):
    """log p(y_n) = z_n[y_n] − logsumexp(z_n) with z_n = h_n @ W.T, for rows n of hidden (N, C), a chunk of rows at a
    time; 0 where y_n = IGNORE. Saves h, W, y and the per-row logsumexp, never the (N, V) logits: the backward
    recomputes each chunk's logits, d log p(y_n) / d z_n = onehot(y_n) − softmax(z_n), and accumulates grad h and
    grad W. The matmuls run in the dtype of h and W (the caller casts them), the softmax arithmetic in fp32."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk_size):
        logprobs, logsumexps = [], []
        for start in range(0, hidden.size(0), chunk_size):
            y = targets[start:start + chunk_size]
            logits = (hidden[start:start + chunk_size] @ weight.t()).float()  # (chunk, V)
            logsumexp = torch.logsumexp(logits, dim=-1)
            target_logits = logits.gather(1, y.clamp(min=0)[:, None]).squeeze(1)
            logprobs.append(torch.where(y != IGNORE, target_logits - logsumexp, 0.0))
            logsumexps.append(logsumexp)
        ctx.save_for_backward(hidden, weight, targets, torch.cat(logsumexps))
        ctx.chunk_size = chunk_size
        return torch.cat(logprobs)

    @staticmethod
    def backward(ctx, grad_logprobs):
        hidden, weight, targets, logsumexp = ctx.saved_tensors
        grad_hidden = []
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)  # fp32 sum over chunks
        for start in range(0, hidden.size(0), ctx.chunk_size):
            end = start + ctx.chunk_size
            h, y = hidden[start:end], targets[start:end]
            grad = torch.where(y != IGNORE, grad_logprobs[start:end], 0.0)  # ignored rows: no gradient
            # grad_logits = grad · (onehot(y) − softmax), built in place in the one (chunk, V) fp32 buffer
            grad_logits = (h @ weight.t()).float().sub_(logsumexp[start:end, None]).exp_().mul_(-grad[:, None])
            grad_logits.scatter_add_(1, y.clamp(min=0)[:, None], grad[:, None])
            grad_logits = grad_logits.to(hidden.dtype)
            grad_hidden.append(grad_logits @ weight)
            grad_weight += (grad_logits.t() @ h).float()
        return torch.cat(grad_hidden), grad_weight.to(weight.dtype), None, None


def _target_logprobs(logits, targets):
    """log p(target) at every position (0 where ignored) and the mask of positions that count. From plain logits:
    by cross-entropy, which run eagerly makes an fp32 copy of the (B, T, V) logits under autocast and keeps their
    fp32 log-softmax until the backward; torch.compile can fuse these away. From ChunkedLogits: a chunk of positions
    at a time (_ChunkedTargetLogprobs)."""
    mask = targets != IGNORE
    if not isinstance(logits, ChunkedLogits):
        ce = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE, reduction='none')
        return -ce.view_as(targets), mask
    hidden, weight, chunk_size = logits
    device_type = hidden.device.type
    if torch.is_autocast_enabled(device_type):
        # The plain lm_head's matmul runs in the autocast dtype; so do the chunks'. Cast here, outside the Function:
        # autograd casts the gradients back to fp32, and the Function multiplies the same bf16/fp16 tensors in its
        # forward and in its backward whether or not autocast is on when the backward runs (custom_fwd/custom_bwd
        # would do the same but fix the device type where the Function is defined).
        dtype = torch.get_autocast_dtype(device_type)
        hidden, weight = hidden.to(dtype), weight.to(dtype)
    logprobs = _ChunkedTargetLogprobs.apply(hidden.flatten(0, 1), weight, targets.flatten(), chunk_size)
    return logprobs.view_as(targets), mask


def _masked_mean(x, mask):
    return (x * mask).sum() / mask.sum().clamp(min=1)


def mle(logits, targets):
    """L = mean_t −log p(x_t)."""
    logp, mask = _target_logprobs(logits, targets)
    return _masked_mean(-logp, mask)


def unlikelihood(logits, targets, rewards, threshold, alpha, soft=False):
    """Token-level unlikelihood (Welleck et al.; paper Eq. 6; reference §1.4). With s_t = −r_t the score:

        a_t = 1[s_t ≤ threshold]     (soft=False)
        a_t = 1 − s_t                (soft=True: the original's behaviour when its threshold is 0)
        L = mean_t [ −a_t·log p_t − alpha·(1 − a_t)·log max(1 − p_t, 1e−20) ]

    Misaligned tokens get no likelihood term, only the push-down of their probability.
    """
    logp, mask = _target_logprobs(logits, targets)
    scores = -rewards.float()
    aligned = 1.0 - scores if soft else (scores <= threshold).float()
    log_one_minus_p = torch.log(torch.clamp(1.0 - logp.exp(), min=1e-20))
    return _masked_mean(-aligned * logp - alpha * (1.0 - aligned) * log_one_minus_p, mask)


def masked_mle(logits, targets, rewards, threshold):
    """Token-level masking: MLE on the tokens of aligned segments only, no likelihood and no unlikelihood for the
    tokens of misaligned ones. With s_t = −r_t the score and N the number of target positions:

        L = (1/N) · Σ_t 1[s_t ≤ threshold] · −log p_t

    That is `unlikelihood` with alpha = 0 and a hard threshold (the same N in the denominator, so a batch with many
    misaligned tokens gives a smaller step, as in unlikelihood training).
    """
    logp, mask = _target_logprobs(logits, targets)
    aligned = (-rewards.float() <= threshold).float()
    return _masked_mean(-aligned * logp, mask)


def awr(logits, values, targets, rewards, alpha, beta, clip_weight_max=1000.0):
    """Advantage-weighted regression (paper Eq. 8; reference §1.5), per token:

        A_t = r_t − stopgrad(V_t)
        w_t = clamp(exp(A_t / beta), 0, clip_weight_max)      (a constant: no gradient flows through it)
        L = alpha · mean_t(w_t · −log p_t) + (1 − alpha) · mean_t((r_t − V_t)²)

    RWR is alpha = 1: the value loss vanishes, the zero-initialised value head stays at V = −0.5 and
    w_t = exp(0.5/beta)·exp(r_t/beta), reward-weighted regression up to a constant factor.
    """
    logp, mask = _target_logprobs(logits, targets)
    rewards = rewards.float()
    advantage = rewards - values.detach().float()
    weights = torch.clamp(torch.exp(advantage / beta), 0.0, clip_weight_max)
    policy_loss = _masked_mean(-weights * logp, mask)
    value_loss = _masked_mean((rewards - values.float()) ** 2, mask)
    return alpha * policy_loss + (1.0 - alpha) * value_loss
