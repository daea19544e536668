"""
Filtering and conditional training as split-to-split transformations: each builds, from a prepared split, another
split in the same on-disk format (data.py), cached next to its source (e.g. data/pii/train.cond-0-0.01-42), which
the method then trains on with MLE.

Conditional training with K control tokens (cond_bins = K): segment scores fall into K bins whose upper edges are
`grade_edges`, and each segment is prefixed with its bin's token, best bin first (`data.control_tokens`). K = 2 is
the paper's <|aligned|> / <|misaligned|> at one threshold; K > 2 splits the misaligned segments further (Quark-style
reward tokens), and samples are still drawn after <|aligned|>, the best bin's token.
"""
import os

import numpy as np

from data import (METHODS, VOCAB_SIZE, DatasetWriter, DataError, PreparedData, control_tokens,
                  remove_leftovers)


def score_sample(scores, most=1_000_000):
    """At most about `most` of a split's scores, evenly spaced (all of them up to that), as float64."""
    return np.asarray(scores[::max(1, len(scores) // most)], dtype=np.float64)


def scale_thresholds(task, split):
    """The method thresholds for a split scored on another scale than the task's scorer's: its scores' quantiles at
    the shares of aligned segments and kept documents that the paper's thresholds give on the paper's data
    (data.Task.aligned_share for cond_threshold and ul_threshold, kept_share for filter_threshold), with a hard
    unlikelihood threshold; None where the task's share is not known."""
    aligned = None if task.aligned_share is None else float(np.quantile(score_sample(split.seg_scores),
                                                                        task.aligned_share))
    return dict(cond_threshold=aligned, ul_threshold=aligned, ul_soft=False,
                filter_threshold=float(np.quantile(score_sample(split.doc_scores), task.kept_share)))


def filter_documents(src, out_dir, threshold):
    """Keep the documents whose score is <= threshold (reference §1.2); the objective stays MLE."""
    scores = np.asarray(src.doc_scores)
    if not (scores <= threshold).any():
        raise DataError(f"{src.path}: filtering at {threshold:g} keeps none of its {len(scores):,} documents (its "
                        f"lowest document score is {scores.min():.3g}); raise --filter_threshold")
    with DatasetWriter(out_dir, task=src.header['task'], split=src.header['split'], source=src.path,
                       scorer=src.header['scorer'], vocab_size=src.header['vocab_size'],
                       transform=dict(kind='filter', threshold=threshold),
                       extra=dict(source_created=src.header['created'])) as w:
        for tokens, seg_lens, seg_scores, doc_nseg, doc_scores in src.chunks():
            keep = doc_scores <= threshold
            doc_tok = np.add.reduceat(seg_lens, np.concatenate([[0], np.cumsum(doc_nseg)[:-1]]))
            keep_seg = np.repeat(keep, doc_nseg)
            if keep.any():
                w.add_arrays(tokens[np.repeat(keep, doc_tok)], seg_lens[keep_seg], seg_scores[keep_seg],
                             doc_nseg[keep], doc_scores[keep])
    return PreparedData(out_dir)


def grade_edges(seg_scores, threshold, bins):
    """The upper edges of the K = bins score bins, ascending: the threshold, then (bins > 2) the quantiles at
    1/(K−1), ..., (K−2)/(K−1) of the scores above it. A segment's bin is the number of edges below its score, so
    bin 0 is 'score <= threshold', the paper's aligned segments, and the misaligned ones split into K − 1 bins of
    about equal size. (Quantiles over all segments would collapse: on PII most segments score 0.)"""
    if bins == 2:
        return [float(threshold)]
    scores = np.asarray(seg_scores, dtype=np.float64)
    above = scores[scores > threshold]
    if above.size == 0:
        raise DataError(f"cond_bins {bins}: no segment scores above the threshold {threshold:g} to grade")
    return [float(threshold)] + np.quantile(above, np.arange(1, bins - 1) / (bins - 1)).tolist()


def add_control_tokens(src, out_dir, threshold, drop_fraction, seed, bins=2):
    """Prefix each segment with the control token of its score's bin (grade_edges; K = 2: <|aligned|> iff its score
    <= threshold, else <|misaligned|>), except a random drop_fraction of segments that get none (reference §1.3).
    A document's first segment becomes EOS + control + text. The control token joins its segment, so it carries the
    segment's score."""
    edges = grade_edges(src.seg_scores, threshold, bins)
    tokens_of_bin = np.asarray(control_tokens(bins))
    rng = np.random.default_rng(seed)
    with DatasetWriter(out_dir, task=src.header['task'], split=src.header['split'], source=src.path,
                       scorer=src.header['scorer'], vocab_size=max(VOCAB_SIZE, int(tokens_of_bin.max()) + 1),
                       transform=dict(kind='cond', threshold=threshold, drop_fraction=drop_fraction, seed=seed,
                                      **(dict(bins=bins, edges=edges) if bins > 2 else {})),
                       extra=dict(source_created=src.header['created'])) as w:
        for tokens, seg_lens, seg_scores, doc_nseg, doc_scores in src.chunks():
            first = np.zeros(len(seg_lens), dtype=np.int64)
            first[np.concatenate([[0], np.cumsum(doc_nseg)[:-1]])] = 1  # insert after the document's EOS
            where = np.concatenate([[0], np.cumsum(seg_lens)[:-1]]) + first
            control = tokens_of_bin[np.searchsorted(edges, seg_scores, side='left')]  # edges below the score
            insert = rng.random(len(seg_lens)) >= drop_fraction
            new_tokens = np.insert(tokens.astype(np.int64), where[insert], control[insert])
            w.add_arrays(new_tokens, seg_lens + insert, seg_scores, doc_nseg, doc_scores)
    return PreparedData(out_dir)


def for_method(split_dir, method, *, filter_threshold=None, cond_threshold=None, drop_token_fraction=None,
               cond_bins=2, seed=0, rank=0):
    """The split a method trains on: the prepared split itself, or a filtered / control-token version of it,
    built once and cached next to it (e.g. data/pep8/train.cond-0-0.1-42, with K > 2 tokens ...-42-k5). Only rank 0
    builds; call it on rank 0 first, then on the others after a barrier."""
    src = PreparedData(split_dir)
    if rank == 0:
        remove_leftovers(os.path.dirname(src.path) or '.', os.path.basename(src.path) + '.')
    kind = METHODS[method].data
    if kind == 'filtered':
        out = f"{src.path}.filter-{filter_threshold:g}"
        build = lambda: filter_documents(src, out, filter_threshold)
    elif kind == 'conditional':
        out = f"{src.path}.cond-{cond_threshold:g}-{drop_token_fraction:g}-{seed}" + (
            f"-k{cond_bins}" if cond_bins != 2 else '')
        build = lambda: add_control_tokens(src, out, cond_threshold, drop_token_fraction, seed, cond_bins)
    else:
        return src
    if os.path.exists(os.path.join(out, 'header.json')):
        cached = PreparedData(out)
        if cached.header.get('source_created') == src.header['created']:  # else the source was re-prepared
            return cached
    if rank != 0:
        raise DataError(f"{out}: missing; rank 0 should have built it")
    print(f"building {out} from {src.path} ...", flush=True)
    return build()


def bin_of(score, edges):
    """A segment score's bin (0: the best) under grade_edges' edges."""
    return int(np.searchsorted(edges, score, side='left'))


def cond_edges(task, data_dir, threshold, bins):
    """grade_edges of a task's prepared training split, as the conditional model's data was built with."""
    if bins == 2:
        return [float(threshold)]
    return grade_edges(PreparedData(os.path.join(data_dir, task, 'train')).seg_scores, threshold, bins)
