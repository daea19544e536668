"""stats.py against values computed by hand."""
import pytest

import stats


def test_wilson_by_hand():
    # z^2 = 3.8415: 0/10 -> (0, z^2 / (10 + z^2)); 5/10 -> 0.5 -/+ z sqrt(2.5 + z^2/4) / (10 + z^2)
    assert stats.wilson(0, 10) == pytest.approx((0.0, 0.27753), abs=1e-5)
    assert stats.wilson(5, 10) == pytest.approx((0.23659, 0.76341), abs=1e-5)
    assert stats.wilson(10, 10) == pytest.approx((0.72247, 1.0), abs=1e-5)
    assert stats.wilson(0, 0) == (0.0, 1.0)


def test_bootstrap_mean_by_enumeration():
    # resampling [0, 1]: the mean is 0, 1/2 or 1 with probability 1/4, 1/2, 1/4: the 2.5% and 97.5% points are 0 and 1
    assert stats.bootstrap_mean([0, 1]) == (0.0, 1.0)
    # [0, 0, 0, 1]: the mean is k/4, k ~ Binomial(4, 1/4); P(k = 0) = 0.32 > 2.5%, P(k <= 2) = 0.949 < 97.5% <=
    # P(k <= 3) = 0.996, so the interval is (0, 3/4)
    assert stats.bootstrap_mean([0, 0, 0, 1]) == (0.0, 0.75)
    assert stats.bootstrap_mean([2.5] * 7) == (2.5, 2.5)


def test_bootstrap_difference_and_verdict():
    assert stats.bootstrap_difference([0, 1], [3, 3]) == (-3.0, -2.0)  # mean(x) in {0, 1/2, 1} minus 3
    assert stats.verdict((-3.0, -2.0)) == 'lower, beyond noise'
    assert stats.verdict((-0.1, 0.0)) == 'no difference (inside the noise)'  # 0 inside the interval: no difference
    assert stats.verdict((0.0, 0.1)) == 'no difference (inside the noise)'
    assert stats.verdict((1e-9, 0.1)) == 'higher, beyond noise'


def test_mean_and_spread():
    assert stats.mean_and_spread([1, 2, 3]) == (2.0, 1.0)
    assert stats.mean_and_spread([4]) == (4.0, 0.0)


def test_paired_t_interval_by_hand():
    # [1, 3]: mean 2, sd √2, se 1; t(1 df) 97.5th percentile 12.7062
    lo, hi = stats.paired_t_interval([1.0, 3.0])
    assert (lo, hi) == pytest.approx((2 - 12.7062047, 2 + 12.7062047))
    # the three PII seeds, cond minus MLE in points: mean -1.6333, sd 1.75594, se 1.01379, t(2 df) 4.30265
    lo, hi = stats.paired_t_interval([-1.8, -3.3, 0.2])
    assert (lo, hi) == pytest.approx((-1.63333 - 4.36200, -1.63333 + 4.36200), abs=1e-4)
    assert stats.verdict((lo, hi)) == 'no difference (inside the noise)'
    assert all(v != v for v in stats.paired_t_interval([1.0]))  # one seed: no interval


def test_verdict_over_seeds_by_hand():
    # -20, -10, -30 points: mean -20, sd 10, se 5.7735, t(2 df) 4.30265 -> -20 ± 24.841: no difference
    mean, (lo, hi), verdict = stats.verdict_over_seeds([-0.20, -0.10, -0.30])
    assert mean == pytest.approx(-0.20) and (lo, hi) == pytest.approx((-0.44841, 0.04841), abs=1e-5)
    assert verdict == 'no difference (inside the noise)'
    # -20, -18, -22, -20: mean -20, sd 1.63299, se 0.81650, t(3 df) 3.18245 -> -20 ± 2.5985: lower
    mean, (lo, hi), verdict = stats.verdict_over_seeds([-0.20, -0.18, -0.22, -0.20])
    assert (lo, hi) == pytest.approx((-0.225985, -0.174015), abs=1e-5) and verdict == 'lower, beyond noise'
    # one seed: a verdict over seeds needs two, however far apart the one seed's models are
    mean, (lo, hi), verdict = stats.verdict_over_seeds([-0.5])
    assert mean == -0.5 and lo != lo and hi != hi and verdict == stats.ONE_SEED
