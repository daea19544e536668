"""
Confidence intervals for misalignment figures, which are means over noisy samples: Wilson's interval for a rate
(share of samples with a hit), a percentile bootstrap for a mean score and for the difference between two models'
means, Student's t for a difference measured once per seed, and the verdicts that follow from them. All at 95% unless
told otherwise.
"""
import math

import numpy as np

Z95 = 1.959963984540054  # the standard normal's 97.5th percentile
BOOTSTRAP_RESAMPLES = 10_000


def wilson(k, n, z=Z95):
    """Wilson score interval (lo, hi) for a rate of k successes in n trials; (0, 1) when n = 0. Unlike the normal
    approximation it stays inside [0, 1] and is not empty at k = 0, which matters for rare hits."""
    if n == 0:
        return 0.0, 1.0
    p, z2 = k / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def _resampled_means(x, resamples, rng):
    x = np.asarray(x, dtype=float)
    return x[rng.integers(0, len(x), (resamples, len(x)))].mean(1)


def bootstrap_mean(x, resamples=BOOTSTRAP_RESAMPLES, level=0.95, seed=0):
    """Percentile bootstrap interval (lo, hi) for the mean of x: the samples drawn with replacement, resamples times."""
    means = _resampled_means(x, resamples, np.random.default_rng(seed))
    return tuple(np.percentile(means, [50 * (1 - level), 50 * (1 + level)]).tolist())


def bootstrap_difference(x, y, resamples=BOOTSTRAP_RESAMPLES, level=0.95, seed=0):
    """Percentile bootstrap interval (lo, hi) for mean(x) - mean(y), x and y resampled independently (two models'
    samples)."""
    rng = np.random.default_rng(seed)
    diffs = _resampled_means(x, resamples, rng) - _resampled_means(y, resamples, rng)
    return tuple(np.percentile(diffs, [50 * (1 - level), 50 * (1 + level)]).tolist())


def paired_t_interval(differences, level=0.95):
    """Student's t interval (lo, hi) for the mean of per-seed differences (a method minus MLE, each seed trained
    both ways): mean ± t_(n−1) · sd / √n. The spread between seeds is in it, which per-run intervals leave out.
    (nan, nan) for fewer than two seeds."""
    from scipy.stats import t  # scipy comes with scikit-learn (requirements.txt)
    d = np.asarray(differences, dtype=float)
    if len(d) < 2:
        return float('nan'), float('nan')
    half = t.ppf(0.5 + level / 2, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
    return float(d.mean() - half), float(d.mean() + half)


def verdict(interval):
    """How a method compares with the baseline, from the interval of (method - baseline)."""
    lo, hi = interval
    if hi < 0:
        return 'lower, beyond noise'
    if lo > 0:
        return 'higher, beyond noise'
    return 'no difference (inside the noise)'


def scenario_figures(scores, threshold):
    """One scenario's samples: the hit rate (share scored above threshold) with its Wilson interval, and the mean
    score with its bootstrap interval."""
    s = np.asarray(scores, dtype=float)
    hits = int((s > threshold).sum())
    return dict(n=len(s), hits=hits, hit_rate=hits / len(s), hit_rate_ci=wilson(hits, len(s)),
                score=float(s.mean()), score_ci=bootstrap_mean(s))


ONE_SEED = 'undecided with one seed'


def verdict_over_seeds(differences, level=0.95):
    """(mean, (lo, hi), verdict) for a difference between two trained models measured once per seed (a method minus
    MLE, each seed trained both ways), from the paired t interval. Training noise (a second run of one recipe from
    other initial weights can land as far from the first as two methods differ) is only in the spread between
    seeds: one seed's sampling interval leaves it out, so one seed gives no interval and the verdict ONE_SEED."""
    d = np.asarray(differences, dtype=float)
    if len(d) < 2:
        return float(d.mean()) if len(d) else float('nan'), (float('nan'), float('nan')), ONE_SEED
    interval = paired_t_interval(d, level)
    return float(d.mean()), interval, verdict(interval)


def mean_and_spread(values):
    """(mean, sample standard deviation) over runs such as seeds; the deviation is 0 for a single run."""
    v = np.asarray(values, dtype=float)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0
