"""
The PHF objectives as pure functions of logits, targets and per-token rewards (reference §1).

Shapes: logits (B, T, V), targets (B, T) with -1 for ignored positions, rewards (B, T) and values (B, T).
targets[b, t] is the token predicted at position t; rewards[b, t] is the reward of the segment containing that
target token, reward = -(misalignment score). Every loss is a mean over the non-ignored target positions.
Filtering and conditional training change the data (data.py) and train with `mle`.
"""
import torch
import torch.nn.functional as F

IGNORE = -1


def _target_logprobs(logits, targets):
    """log p(target) at every position (0 where ignored) and the mask of positions that count. Through the fused
    cross-entropy kernel, so no second (B, T, V) fp32 tensor of log-probabilities is materialised."""
    ce = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE, reduction='none')
    return -ce.view_as(targets), targets != IGNORE


def _masked_mean(x, mask):
    return (x * mask).sum() / mask.sum().clamp(min=1)


def mle(logits, targets):
    """L = mean_t −log p(x_t)."""
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE)


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
