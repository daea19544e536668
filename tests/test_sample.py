"""The sampler's top-p: the set of tokens it may draw is the set Hugging Face's TopPLogitsWarper keeps, and on CPU
its draw is the first of 8 that falls inside that set, decided without sorting."""
import pytest
import torch
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

import data
import model
from model import threshold_by_bisection, threshold_by_topk

V = 3000


def hf_kept(logits, bias, temperature, top_k, top_p):
    """What HF's warpers leave finite, in generate's order (temperature, top-k, top-p)."""
    scores = TemperatureLogitsWarper(temperature)(None, logits + bias)
    if top_k:
        scores = TopKLogitsWarper(top_k)(None, scores)
    return torch.isfinite(TopPLogitsWarper(top_p)(None, scores))


def logits_of(kind, rows=24):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(rows, V, generator=g)
    return {'random': 2 * z, 'flat': 0.01 * z, 'peaked': 20 * z,
            'ties': torch.round(2 * z) / 2}[kind]  # ~17 distinct values: ties inside and outside the nucleus


def rule(temperature=0.7, top_k=0, top_p=0.9, banned=(), min_new_tokens=0, seed=0):
    return model.Draw(temperature=temperature, top_k=top_k, top_p=top_p, banned=torch.tensor(banned, dtype=torch.long),
                      eos_id=data.EOS, min_new_tokens=min_new_tokens, gen=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize('threshold', [threshold_by_topk, threshold_by_bisection])
@pytest.mark.parametrize('kind', ['random', 'flat', 'peaked', 'ties'])
@pytest.mark.parametrize('top_p', [0.1, 0.9])
@pytest.mark.parametrize('top_k,banned', [(0, ()), (50, ()), (0, (0, 7, 2999)), (200, (3, 4))])
def test_the_tokens_that_may_be_drawn_are_those_hf_keeps(monkeypatch, threshold, kind, top_p, top_k, banned):
    """pick's masked path (every path on a GPU): the tokens model.nucleus leaves non-zero."""
    monkeypatch.setattr(model, 'top_p_threshold', threshold)
    logits, bias = logits_of(kind), torch.zeros(V)
    bias[list(banned)] = float('-inf')
    ours = model.nucleus(model.next_token_probs(logits, rule(top_k=top_k, banned=banned), 0), top_p) > 0
    hf = hf_kept(logits, bias, 0.7, top_k, top_p)
    if kind != 'ties':
        assert torch.equal(ours, hf)
        return
    # HF keeps an arbitrary part of the tokens tied with the smallest kept value (its sort's order); we keep all
    probs = ((logits + bias) / 0.7).softmax(-1)
    smallest_kept = torch.where(hf, probs, 2).min(-1, keepdim=True).values
    assert torch.equal(ours, hf | (probs == smallest_kept))
    assert (ours != hf).any()  # the case is really exercised


def test_top_p_one_keeps_every_token_allowed():
    logits = logits_of('flat')
    probs = model.next_token_probs(logits, rule(top_p=1.0, banned=(5,)), 0)
    assert torch.equal(probs > 0, hf_kept(logits, torch.zeros(V).index_fill(0, torch.tensor([5]), -float('inf')),
                                          0.7, 0, 1.0))
    assert probs[:, 5].eq(0).all() and probs[:, :5].gt(0).all()


@pytest.mark.parametrize('kind', ['random', 'flat', 'peaked', 'ties'])
@pytest.mark.parametrize('top_p', [0.1, 0.9, 0.999])
def test_in_nucleus_decides_every_token_as_the_threshold_does(kind, top_p):
    """Every token of 6 rows: in_nucleus's sure answers are threshold_by_topk's (q >= threshold); the unsure ones
    lie at the boundary: the mass above them is within float32 rounding (about 2 · V · 2^-24) of top_p."""
    probs = (logits_of(kind, rows=6) / 0.7).softmax(-1)
    threshold = threshold_by_topk(probs, top_p)
    for row, t in zip(probs, threshold):
        decided = model.in_nucleus(row.expand(V, V), row, top_p)
        assert torch.equal(row[decided == 1] >= t, torch.ones_like(row[decided == 1], dtype=torch.bool))
        assert row[decided == 0].lt(t).all()
        unsure = row[decided == -1]
        above = (row.double()[None, :] * (row[None, :] > unsure[:, None])).sum(-1)
        assert (above - top_p).abs().max() <= 2.1 * V * 2 ** -24 if unsure.numel() else True


def test_in_nucleus_is_unsure_within_float32_rounding_of_top_p():
    # 1,000 tokens of 1/1000 each: no token is more probable than another, so all are inside
    probs = torch.full((1, 1000), 1e-3)
    assert model.in_nucleus(probs, probs[:, 0], 0.01).item() == 1
    # two tokens: 0.75 above 0.25; top_p exactly 0.75 is outside (the mass before must be < top_p), just above is in
    probs = torch.tensor([[0.75, 0.25]])
    assert model.in_nucleus(probs, probs[:, 1], 0.7).item() == 0
    assert model.in_nucleus(probs, probs[:, 1], 0.8).item() == 1
    assert model.in_nucleus(probs, probs[:, 1], 0.75).item() == -1  # the rounding could go either way: unsure
    assert model.in_nucleus(probs, probs[:, 1], 0.75 + 1e-7).item() == -1
    assert model.in_nucleus(probs, probs[:, 1], 0.75 + 1e-6).item() == 1  # one token above: a margin of 6 · 2^-24


def first_inside_by_sorting(probs, top_p, gen):
    """The reference: 8 draws from the whole distribution, each checked against the sorted threshold; the first
    inside, or None if a row has none."""
    ids = model._inverse_cdf(probs, gen, 8)
    inside = probs.gather(-1, ids) >= threshold_by_topk(probs, top_p)
    if not inside.any(-1).all():
        return None
    return ids.gather(-1, inside.int().argmax(-1, keepdim=True)).squeeze(-1)


@pytest.mark.parametrize('kind', ['random', 'flat', 'peaked', 'ties'])
@pytest.mark.parametrize('top_p', [0.7, 0.9, 0.99])
def test_the_cpu_draw_is_the_first_of_eight_inside_the_nucleus(kind, top_p):
    probs = (logits_of(kind, rows=200) / 0.7).softmax(-1)
    ours = model.first_draw_in_nucleus(probs, top_p, torch.Generator().manual_seed(1))
    reference = first_inside_by_sorting(probs, top_p, torch.Generator().manual_seed(1))
    assert reference is not None and torch.equal(ours, reference)
    hf = hf_kept(logits_of(kind, rows=200), torch.zeros(V), 0.7, 0, top_p)
    assert hf.gather(-1, ours[:, None]).all() or kind == 'ties'  # no draw outside HF's set (ties: see above)


def test_the_partition_grows_its_candidates_until_the_nucleus_fits():
    probs = torch.full((2, 5000), 1 / 5000)
    probs[0] = torch.linspace(1, 2, 5000) / torch.linspace(1, 2, 5000).sum()  # a nucleus of ~4,400 tokens > 512
    sorted_probs = probs.sort(-1, descending=True).values
    n_kept = ((sorted_probs.cumsum(-1) - sorted_probs) < 0.9).sum(-1)
    expected = sorted_probs.gather(-1, (n_kept - 1)[:, None])
    assert n_kept[0] > 4096
    assert torch.equal(threshold_by_topk(probs, 0.9, k=64), expected)
    assert torch.equal(threshold_by_bisection(probs, 0.9), expected)


def test_the_boundary_token_is_kept_iff_the_mass_before_it_is_below_top_p():
    probs = torch.tensor([[0.125, 0.375, 0.5], [0.05, 0.9, 0.05]])  # exact in binary: sums have no rounding
    for threshold in (threshold_by_topk, threshold_by_bisection):
        assert threshold(probs, 0.875).flatten().tolist() == [0.375, 0.8999999761581421]  # 0.5 + 0.375 = top_p: out
        assert threshold(probs, 0.876).flatten().tolist() == [0.125, 0.8999999761581421]  # just below: in
        assert threshold(probs, 0.5).flatten().tolist() == [0.5, 0.8999999761581421]  # the first is always kept


def test_draws_outside_the_nucleus_fall_back_to_the_masked_path():
    # token 0 alone is the nucleus (0.12 >= top_p) but holds 12% of the mass: 8 draws all miss it for ~36% of rows
    probs = torch.tensor([0.12] + [0.88 / 99] * 99)
    assert model.first_draw_in_nucleus(probs.repeat(200, 1), 0.1, torch.Generator().manual_seed(0)) is None
    ids = model.pick(probs.log().repeat(200, 1), rule(temperature=1.0, top_p=0.1), 0)
    assert ids.eq(0).all()


def test_draws_inside_the_nucleus_keep_their_proportions():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])  # top_p 0.9: the mass before 0.05 is 0.95, so it is left out
    ids = model.pick(probs.log().repeat(20000, 1), rule(temperature=1.0, top_p=0.9), 0)
    freq = torch.bincount(ids, minlength=4) / 20000
    assert freq[3] == 0
    assert freq[:3].tolist() == pytest.approx([0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95], abs=0.01)


def test_end_of_text_is_banned_before_min_new_tokens():
    logits = torch.zeros(3, data.EOS + 1)
    logits[:, data.EOS] = 50  # end-of-text is all but certain, when allowed
    draw = rule(temperature=0, min_new_tokens=2, banned=(7,))
    assert model.pick(logits, draw, 1).ne(data.EOS).all() and model.pick(logits, draw, 2).eq(data.EOS).all()
    assert draw.banned_at(1).tolist() == [7, data.EOS] and draw.banned_at(2).tolist() == [7]


# Guided sampling (classifier-free guidance over control tokens)

def test_guided_logits_by_hand():
    logits = torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])  # row 0: after <|aligned|>, row 1: after <|misaligned|>
    assert model.guided_logits(logits, 0.5).tolist() == [[0.0, 2.0, 4.0]]  # 1 + 0.5·(1 - 3), 2 + 0, 3 + 0.5·(3 - 1)
    assert model.guided_logits(logits, 0.0).tolist() == [[1.0, 2.0, 3.0]]
    assert model.guided_logits(logits, -1.0).tolist() == [[3.0, 2.0, 1.0]]  # -1: the negative row's


def tiny_model():
    torch.manual_seed(0)
    return model.GPT(model.GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=32)).eval()


def twin_prompts():
    bodies = [[5, 6, 7], [8], [], [9, 10, 11, 12, 13]]  # different lengths: left padding in one batch
    pos = [[data.EOS, data.ALIGNED] + b for b in bodies]
    neg = [[data.EOS, data.MISALIGNED] + b for b in bodies]
    return pos, neg


def test_guidance_zero_is_the_unguided_sampler():
    m, (pos, neg) = tiny_model(), twin_prompts()
    plain = model.sample(m, pos, 12, eos_id=data.EOS, seed=3, batch_size=3)
    assert model.sample(m, pos, 12, eos_id=data.EOS, seed=3, batch_size=3, guidance=0.0, negative_prompts=neg) == plain
    assert model.sample(m, pos, 12, eos_id=data.EOS, seed=3, batch_size=3, guidance=1.0, negative_prompts=neg) != plain


def greedy_guided_by_full_forward(m, pos, neg, guidance, n_new, blocked):
    """The reference: each step runs both whole sequences, guides their last logits, takes the argmax."""
    out = []
    for p, q in zip(pos, neg):
        new = []
        for t in range(n_new):
            with torch.no_grad():
                a = m(torch.tensor([p + new]))[0, -1]
                b = m(torch.tensor([q + new]))[0, -1]
            logits = a + guidance * (a - b)
            logits[m.config.vocab_size:] = float('-inf')
            logits[list(blocked)] = float('-inf')
            if t < 2:
                logits[data.EOS] = float('-inf')
            tok = int(logits.argmax())
            if tok == data.EOS:
                break
            new.append(tok)
        out.append(new)
    return out


@pytest.mark.parametrize('guidance', [1.5, -1.0])
def test_guided_greedy_sampling_matches_the_full_forward(guidance):
    m, (pos, neg) = tiny_model(), twin_prompts()
    blocked = (data.ALIGNED, data.MISALIGNED)
    ours = model.sample(m, pos, 8, eos_id=data.EOS, temperature=0, min_new_tokens=2, blocked_tokens=blocked,
                        batch_size=3, guidance=guidance, negative_prompts=neg)
    assert ours == greedy_guided_by_full_forward(m, pos, neg, guidance, 8, blocked)
    if guidance == -1.0:  # all the weight on the negative prompts: what they alone would give
        assert ours == model.sample(m, neg, 8, eos_id=data.EOS, temperature=0, min_new_tokens=2, blocked_tokens=blocked)


def test_guidance_needs_a_negative_prompt_per_prompt():
    m, (pos, neg) = tiny_model(), twin_prompts()
    with pytest.raises(ValueError, match='negative_prompts'):
        model.sample(m, pos, 4, eos_id=data.EOS, guidance=1.0)
    with pytest.raises(ValueError, match='negative_prompts'):
        model.sample(m, pos, 4, eos_id=data.EOS, guidance=1.0, negative_prompts=neg[:2])


def test_rows_in_nucleus_cannot_decide_take_their_threshold(monkeypatch):
    monkeypatch.setattr(model, 'in_nucleus', lambda probs, q, top_p: torch.full((probs.size(0),), -1))
    probs = (logits_of('flat', rows=50) / 0.7).softmax(-1)  # nuclei of thousands: the top 64 decide few draws
    ours = model.first_draw_in_nucleus(probs, 0.9, torch.Generator().manual_seed(2))
    assert torch.equal(ours, first_inside_by_sorting(probs, 0.9, torch.Generator().manual_seed(2)))
