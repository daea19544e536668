"""The held-out gap (heldout.py) against values computed by hand: a bigram 'model' that gives the token after t
probability 1/2 (loss ln 2) and every other token 1/(2(V − 1)) (loss ln 2 + ln(V − 1)), on two documents whose
segments we know. Losses in float32 (as the model computes them): equal to the hand values within 2e-4."""
import json
import math
import os

import numpy as np
import pytest
import torch

import data
import evaluate as ev
import heldout
from model import GPT, GPTConfig
from settings import EvalConfig

V = data.VOCAB_SIZE
NEAR, FAR = math.log(2), math.log(2) + math.log(V - 1)  # the loss of the token after the previous one, of any other


class NextIdModel(torch.nn.Module):
    """Logits that give the id after the input's p = 1/2, the other V − 1 ids the rest evenly."""

    def __init__(self, block_size=64):
        super().__init__()
        self.config = GPTConfig(block_size=block_size, vocab_size=V)
        self.weight = torch.nn.Parameter(torch.zeros(()))  # evaluate() asks for a parameter's device

    def forward(self, idx):
        logits = torch.zeros(*idx.shape, self.config.padded_vocab_size)
        logits.scatter_(-1, (idx + 1).clamp(max=V - 1)[..., None], math.log(V - 1))
        return logits


def two_documents(root):
    """doc 0: <|endoftext|> 5 6 (aligned), 7 8 9 10 11 (misaligned); doc 1: <|endoftext|> 5 (aligned), 7 7
    (misaligned), 3 (aligned)."""
    path = os.path.join(root, 'pii', 'val')
    with data.DatasetWriter(path, task='pii', split='val') as w:
        w.add_document([[5, 6], [7, 8, 9, 10, 11]], [0.0, 0.5])
        w.add_document([[5], [7, 7], [3]], [0.0, 0.01, 0.0])
    return data.PreparedData(path)


def test_documents_are_cut_to_whole_segments_and_taken_until_the_budget(tmp_path):
    split = two_documents(str(tmp_path))
    docs = heldout.heldout_documents(split, max_tokens=100, threshold=0.0)
    assert [d[0].tolist() for d in docs] == [[data.EOS, 5, 6, 7, 8, 9, 10, 11], [data.EOS, 5, 7, 7, 3]]
    assert [d[1].tolist() for d in docs] == [[0, 3], [0, 2, 4]]
    assert [d[2].tolist() for d in docs] == [[False, True], [False, True, False]]
    cut = heldout.heldout_documents(split, max_tokens=100, threshold=0.0, document_tokens=7)
    assert [d[0].tolist() for d in cut] == [[data.EOS, 5, 6], [data.EOS, 5, 7, 7, 3]]  # 8 tokens > 7: one segment
    first = heldout.heldout_documents(split, max_tokens=100, threshold=0.0, document_tokens=2)
    assert [d[0].tolist() for d in first] == [[data.EOS, 5], [data.EOS, 5]]  # a first segment too long is cut
    assert len(heldout.heldout_documents(split, max_tokens=8, threshold=0.0)) == 1  # 8 tokens reach the budget
    assert len(heldout.heldout_documents(split, max_tokens=9, threshold=0.0)) == 2
    # a threshold above 0.01 makes doc 1's second segment aligned
    assert heldout.heldout_documents(split, 100, threshold=0.02)[1][2].tolist() == [False, False, False]


def test_the_stream_puts_a_control_token_before_every_segment_and_counts_only_text(tmp_path):
    docs = heldout.heldout_documents(two_documents(str(tmp_path)), 100, 0.0)
    A, M, N = heldout.ALIGNED, heldout.MISALIGNED, heldout.NOT_COUNTED
    tokens, document, kind, rank = heldout.token_stream(docs)
    assert tokens.tolist() == [data.EOS, 5, 6, 7, 8, 9, 10, 11, data.EOS, 5, 7, 7, 3]
    assert document.tolist() == [0] * 8 + [1] * 5
    assert kind.tolist() == [N, A, A, M, M, M, M, M, N, A, M, M, A]
    assert rank.tolist() == [-1, 0, 1, 0, 1, 2, 3, 4, -1, 0, 0, 1, 0]
    c = data.ALIGNED
    tokens, document, kind, rank = heldout.token_stream(docs, control=c)
    assert tokens.tolist() == [data.EOS, c, 5, 6, c, 7, 8, 9, 10, 11, data.EOS, c, 5, c, 7, 7, c, 3]
    assert kind.tolist() == [N, N, A, A, N, M, M, M, M, M, N, N, A, N, M, M, N, A]
    assert rank.tolist() == [-1, -1, 0, 1, -1, 0, 1, 2, 3, 4, -1, -1, 0, -1, 0, 1, -1, 0]


@pytest.mark.parametrize('block_size,batch_size', [(64, 8), (3, 2), (4, 1), (1, 5)])
def test_every_token_but_the_first_is_scored_once_whatever_the_blocks(block_size, batch_size):
    tokens = np.array([data.EOS, 5, 6, 7, 8, 9, 10, 11, data.EOS, 5, 7, 7, 3])
    losses = heldout.token_losses(NextIdModel(block_size), tokens, block_size, batch_size, 'cpu')
    expected = [FAR, NEAR, NEAR, NEAR, NEAR, NEAR, NEAR, FAR, FAR, FAR, FAR, FAR]
    assert losses == pytest.approx(expected, abs=2e-4)


def test_the_gap_by_hand(tmp_path):
    split = two_documents(str(tmp_path))
    metrics, sums = heldout.heldout_gap(NextIdModel(), split, 100, 0.0, None, 4, 'cpu')
    # aligned: 5 (after EOS: FAR), 6 (NEAR); 5 (FAR), 3 (after 7: FAR). misaligned: 7..11 (NEAR each); 7 (FAR), 7 (FAR)
    aligned, misaligned = (3 * FAR + NEAR) / 4, (5 * NEAR + 2 * FAR) / 7
    assert metrics['loss_aligned'] == pytest.approx(aligned, abs=2e-4)
    assert metrics['loss_misaligned'] == pytest.approx(misaligned, abs=2e-4)
    assert metrics['gap'] == pytest.approx(misaligned - aligned, abs=2e-4)
    # only the first 4 of each segment: 11 is left out
    assert metrics['gap_first4'] == pytest.approx((4 * NEAR + 2 * FAR) / 6 - aligned, abs=2e-4)
    assert (metrics['documents'], metrics['tokens']) == (2, 11)
    assert np.array(sums['gap']) == pytest.approx(np.array([[5 * NEAR, 5, FAR + NEAR, 2], [2 * FAR, 2, 2 * FAR, 2]]),
                                                  rel=1e-4)
    # with <|aligned|> before every segment each segment's first token follows the control token: FAR
    metrics, _ = heldout.heldout_gap(NextIdModel(), split, 100, 0.0, data.ALIGNED, 4, 'cpu')
    aligned, misaligned = (3 * FAR + NEAR) / 4, (4 * NEAR + 3 * FAR) / 7
    assert metrics['gap'] == pytest.approx(misaligned - aligned, abs=2e-4)


def test_no_gap_without_misaligned_text(tmp_path):
    split = two_documents(str(tmp_path))
    metrics, sums = heldout.heldout_gap(NextIdModel(), split, 100, 1.0, None, 4, 'cpu')  # every segment aligned
    assert 'gap' not in metrics and sums == {}
    assert metrics['documents'] == 2


def test_bootstrap_intervals_over_documents():
    sums = np.array([[2.0, 1, 1, 1], [0, 0, 1, 1]])  # doc 1 has no misaligned token: a draw of it alone is left out
    assert heldout.gap(sums) == pytest.approx(1.0)
    assert heldout.gap_interval(sums) == pytest.approx((1.0, 1.0))
    shifted = sums + np.array([[1.0, 0, 0, 0], [0, 0, 0, 0]])  # misaligned loss 3 where it is 2: the gap is 1 higher
    assert heldout.gap_interval(shifted, baseline=sums) == pytest.approx((1.0, 1.0))  # paired: no spread at all
    spread = np.array([[1.0, 1, 0, 1], [3, 1, 0, 1]])  # gaps 1 and 3: the pooled gap is within [1, 3]
    lo, hi = heldout.gap_interval(spread)
    assert 1 <= lo < 2 < hi <= 3
    with pytest.raises(ValueError, match='other documents'):
        heldout.gap_interval(sums, baseline=sums[:1])


def test_evaluate_records_the_gap_for_each_control_token_and_keeps_the_sums(tmp_path):
    root = str(tmp_path / 'data')
    split = two_documents(root)
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=4, vocab_size=V, n_layer=1, n_head=1, n_embd=8)).eval()
    cfg = EvalConfig(task='pii', method='cond', data_dir=root, out_dir=str(tmp_path / 'out'), block_size=4,
                     eval_iters=1, eval_batch_size=2, eval_samples=0, cond_threshold=0.0)
    result = ev.evaluate(model, cfg, 3, 0, 'cpu')
    for prefix, control in (('heldout', data.ALIGNED), ('heldout_misaligned', data.MISALIGNED)):
        expected, _ = heldout.heldout_gap(model, split, cfg.eval_heldout_tokens, 0.0, control, 2, 'cpu')
        assert {k: result[f'{prefix}/{k}'] for k in expected} == expected
    with open(tmp_path / 'out' / 'eval_step3.json') as f:
        kept = json.load(f)['heldout']
    assert set(kept) == {'heldout', 'heldout_misaligned'} and np.shape(kept['heldout']['gap']) == (2, 4)
    mle = ev.evaluate(model, EvalConfig(**dict(vars(cfg), method='mle')), 4, 0, 'cpu')
    assert mle['heldout/gap'] == heldout.heldout_gap(model, split, 10**6, 0.0, None, 2, 'cpu')[0]['gap']
    assert not any(k.startswith('heldout_misaligned') for k in mle)
    for off in (dict(eval_heldout_tokens=0), dict(eval_iters=0)):
        result = ev.evaluate(model, EvalConfig(**dict(vars(cfg), **off)), 5, 0, 'cpu')
        assert not any(k.startswith('heldout') for k in result)
