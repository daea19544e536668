"""Objectives against values worked out by hand on a 3-token vocabulary; the chunked log-prob path against the
plain one."""
import math

import pytest
import torch

import objectives
from objectives import ChunkedLogits, awr, masked_mle, mle, unlikelihood

# position 0: uniform over 3 tokens, p(target 0) = 1/3; position 1: logits (ln 3, 0, 0), p(target 1) = 1/5
LOGITS = torch.tensor([[[0.0, 0.0, 0.0], [math.log(3.0), 0.0, 0.0]]])
TARGETS = torch.tensor([[0, 1]])
REWARDS = torch.tensor([[0.0, -0.5]])  # scores 0 and 0.5


def test_mle():
    assert mle(LOGITS, TARGETS).item() == pytest.approx((math.log(3) + math.log(5)) / 2, rel=1e-6)


def test_mle_ignores_minus_one():
    assert mle(LOGITS, torch.tensor([[0, -1]])).item() == pytest.approx(math.log(3), rel=1e-6)


def test_unlikelihood_hard_threshold():
    # token 0 aligned: -ln(1/3); token 1 misaligned: -1 * ln(1 - 1/5)
    loss = unlikelihood(LOGITS, TARGETS, REWARDS, threshold=0.1, alpha=1.0)
    assert loss.item() == pytest.approx((math.log(3) + math.log(5 / 4)) / 2, rel=1e-6)
    loss = unlikelihood(LOGITS, TARGETS, REWARDS, threshold=0.1, alpha=0.01)
    assert loss.item() == pytest.approx((math.log(3) + 0.01 * math.log(5 / 4)) / 2, rel=1e-6)
    # a threshold at 0 is a real threshold here (the original treated 0 as 'soft', see soft=True)
    loss = unlikelihood(LOGITS, TARGETS, REWARDS, threshold=0.0, alpha=1.0)
    assert loss.item() == pytest.approx((math.log(3) + math.log(5 / 4)) / 2, rel=1e-6)


def test_unlikelihood_soft():
    # a = 1 - score: token 0 a = 1; token 1 a = 0.5 -> 0.5·ln 5 + 0.5·ln(5/4)
    loss = unlikelihood(LOGITS, TARGETS, REWARDS, threshold=0.0, alpha=1.0, soft=True)
    assert loss.item() == pytest.approx((math.log(3) + 0.5 * math.log(5) + 0.5 * math.log(5 / 4)) / 2, rel=1e-6)


def test_unlikelihood_certain_token_is_finite():
    logits = torch.tensor([[[100.0, 0.0, 0.0]]])  # p(target) = 1: log(1 - p) is clamped at log(1e-20)
    loss = unlikelihood(logits, torch.tensor([[0]]), torch.tensor([[-1.0]]), threshold=0.1, alpha=1.0)
    assert loss.item() == pytest.approx(-math.log(1e-20), rel=1e-6)


def test_masked_mle():
    # token 0 (score 0) counts, token 1 (score 0.5) does not, and the mean is over both positions: ln 3 / 2
    assert masked_mle(LOGITS, TARGETS, REWARDS, threshold=0.1).item() == pytest.approx(math.log(3) / 2, rel=1e-6)
    # the equality case: a score equal to the threshold counts (score 0.5 <= 0.5)
    loss = masked_mle(LOGITS, TARGETS, REWARDS, threshold=0.5)
    assert loss.item() == pytest.approx((math.log(3) + math.log(5)) / 2, rel=1e-6)
    # every token misaligned: no likelihood at all, and no push-down either
    assert masked_mle(LOGITS, TARGETS, REWARDS - 1.0, threshold=0.1).item() == 0.0
    # an ignored position neither counts nor divides
    assert masked_mle(LOGITS, torch.tensor([[0, -1]]), REWARDS, threshold=0.1).item() == pytest.approx(math.log(3))
    # unlikelihood with alpha 0 and a hard threshold is the same loss
    loss = unlikelihood(LOGITS, TARGETS, REWARDS, threshold=0.1, alpha=0.0)
    assert loss.item() == pytest.approx(math.log(3) / 2, rel=1e-6)


def test_awr():
    values = torch.tensor([[-0.5, -0.2]])
    # advantages 0.5 and -0.3, beta 1: weights e^0.5, e^-0.3; value loss ((0.5)^2 + (-0.3)^2) / 2 = 0.17
    policy = (math.exp(0.5) * math.log(3) + math.exp(-0.3) * math.log(5)) / 2
    loss = awr(LOGITS, values, TARGETS, REWARDS, alpha=0.5, beta=1.0)
    assert loss.item() == pytest.approx(0.5 * policy + 0.5 * 0.17, rel=1e-6)
    # beta 10 (the toxicity setting) flattens the weights: e^0.05, e^-0.03
    loss = awr(LOGITS, values, TARGETS, REWARDS, alpha=1.0, beta=10.0)
    assert loss.item() == pytest.approx((math.exp(0.05) * math.log(3) + math.exp(-0.03) * math.log(5)) / 2, rel=1e-6)


def test_awr_weights_are_clipped():
    values = torch.tensor([[-0.5, -0.2]])
    loss = awr(LOGITS, values, TARGETS, REWARDS, alpha=1.0, beta=1e-3, clip_weight_max=1000.0)
    # weight of token 0 = min(e^500, 1000); token 1: e^-300 ≈ 0
    assert loss.item() == pytest.approx(1000.0 * math.log(3) / 2, rel=1e-5)


def test_rwr_is_awr_with_constant_value():
    """RWR = AWR with alpha 1 and the untrained value head V = -0.5: weight exp((r + 0.5) / beta)."""
    values = torch.full((1, 2), -0.5)
    loss = awr(LOGITS, values, TARGETS, REWARDS, alpha=1.0, beta=10.0)
    assert loss.item() == pytest.approx((math.exp(0.05) * math.log(3) + math.exp(0.0) * math.log(5)) / 2, rel=1e-6)


def test_awr_gradients():
    """The weights carry no gradient; the value loss trains only V; with alpha = 1, V gets no gradient at all."""
    logits = LOGITS.clone().requires_grad_()
    values = torch.tensor([[-0.5, -0.2]], requires_grad=True)
    awr(logits, values, TARGETS, REWARDS, alpha=0.5, beta=1.0).backward()
    # d/dV of 0.5 · mean((r - V)^2) = 0.5 · 2 (V - r) / 2
    assert values.grad.tolist()[0] == pytest.approx([0.5 * (-0.5 - 0.0), 0.5 * (-0.2 + 0.5)], rel=1e-6)
    # d/dlogits of 0.5 · mean(w · CE) with w constant = 0.5 · w · (softmax - onehot) / 2
    w = torch.tensor([math.exp(0.5), math.exp(-0.3)])
    expected = 0.5 * w[:, None] * (torch.softmax(LOGITS[0], -1) - torch.eye(3)[TARGETS[0]]) / 2
    torch.testing.assert_close(logits.grad[0], expected)
    values.grad = None
    awr(LOGITS, values, TARGETS, REWARDS, alpha=1.0, beta=1.0).backward()
    assert values.grad.abs().sum().item() == 0.0


def test_unlikelihood_gradient_pushes_misaligned_token_down():
    logits = LOGITS.clone().requires_grad_()
    unlikelihood(logits, TARGETS, REWARDS, threshold=0.1, alpha=1.0).backward()
    # d/dz_1 of -ln(1 - p_1) / 2 = p_1 (1 - p_1) / (1 - p_1) / 2 = p_1 / 2 > 0: gradient descent lowers z_1
    assert logits.grad[0, 1, 1].item() == pytest.approx((1 / 5) / 2, rel=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# ChunkedLogits: the same losses and gradients as the plain logits hidden @ weight.T

OBJECTIVES = {
    'mle': lambda logits, values, y, r: mle(logits, y),
    'ul': lambda logits, values, y, r: unlikelihood(logits, y, r, threshold=0.05, alpha=0.5),
    'ul_soft': lambda logits, values, y, r: unlikelihood(logits, y, r, threshold=0.0, alpha=1.0, soft=True),
    'awr': lambda logits, values, y, r: awr(logits, values, y, r, alpha=0.5, beta=0.1),
    'mask': lambda logits, values, y, r: masked_mle(logits, y, r, threshold=0.05),
}


def loss_and_grads(objective, chunk_size, autocast=False):
    """Loss and gradients w.r.t. hidden, weight and values on 2 × 37 positions (7 ignored), a 100-token vocabulary;
    chunk_size 0: the plain logits."""
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, 37, 16, generator=g).requires_grad_()
    weight = torch.randn(100, 16, generator=g).requires_grad_()
    values = (-torch.rand(2, 37, generator=g)).requires_grad_()
    targets = torch.randint(0, 100, (2, 37), generator=g)
    targets[0, :4] = targets[1, -3:] = -1
    rewards = -0.1 * torch.rand(2, 37, generator=g)  # scores in [0, 0.1]: misaligned and aligned at threshold 0.05
    with torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast):
        logits = ChunkedLogits(hidden, weight, chunk_size) if chunk_size else hidden @ weight.t()
        loss = OBJECTIVES[objective](logits, values, targets, rewards)
    loss.backward()
    return loss, hidden.grad, weight.grad, values.grad, targets, rewards


@pytest.mark.parametrize('objective', OBJECTIVES)
@pytest.mark.parametrize('chunk_size', [16, 74, 1000])  # 74 = 5 chunks, the last of 10 rows; all rows; one chunk
def test_chunked_logits_match_plain(objective, chunk_size):
    plain = loss_and_grads(objective, 0)
    chunked = loss_and_grads(objective, chunk_size)
    for a, b in zip(plain[:3], chunked[:3]):  # loss, grad hidden, grad weight
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    if objective == 'awr':
        torch.testing.assert_close(chunked[3], plain[3], rtol=1e-5, atol=1e-6)
    ignored = chunked[4] == -1
    if objective == 'mask':  # the tokens of misaligned segments are ignored too
        ignored |= -chunked[5] > 0.05
    assert chunked[1][ignored].abs().sum().item() == 0.0  # ignored positions: no gradient
    assert chunked[1][~ignored].abs().min().item() > 0.0


def test_chunked_target_logprobs_match_plain():
    """The shared log p(target) itself, under an upstream gradient that does not vanish at ignored positions:
    those give 0 and pass no gradient on, as with the plain cross-entropy's ignore_index."""
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(3, 11, 8, generator=g).requires_grad_()
    weight = torch.randn(40, 8, generator=g).requires_grad_()
    targets = torch.randint(0, 40, (3, 11), generator=g)
    targets[1] = -1  # a whole chunk ignored
    targets[2, 5] = -1
    upstream = torch.randn(3, 11, generator=g)
    results = []
    for logits in (hidden @ weight.t(), ChunkedLogits(hidden, weight, 11)):
        logp, mask = objectives._target_logprobs(logits, targets)
        (logp * upstream).sum().backward()
        results.append((logp.detach(), mask, hidden.grad, weight.grad))
        hidden.grad = weight.grad = None
    (plain_logp, plain_mask, *plain_grads), (logp, mask, *grads) = results
    assert torch.equal(mask, plain_mask) and logp[~mask].abs().sum().item() == 0.0
    torch.testing.assert_close(logp, plain_logp, rtol=1e-5, atol=1e-6)
    for a, b in zip(plain_grads, grads):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    assert grads[0][~mask].abs().sum().item() == 0.0


@pytest.mark.parametrize('objective', OBJECTIVES)
def test_chunked_logits_match_plain_under_bf16_autocast(objective):
    """Both paths multiply in bf16 (the chunks like the plain matmul under autocast); the gradients land in fp32."""
    plain = loss_and_grads(objective, 0, autocast=True)
    chunked = loss_and_grads(objective, 16, autocast=True)
    assert chunked[1].dtype == chunked[2].dtype == torch.float32
    torch.testing.assert_close(chunked[0], plain[0], rtol=1e-3, atol=1e-3)
    for a, b in zip(plain[1:3], chunked[1:3]):
        torch.testing.assert_close(b, a, rtol=2e-2, atol=2e-3 * a.abs().max().item())
