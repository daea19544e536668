"""
What prepare.py says about the data it wrote: the summary (summary.json beside the splits: counts, what was skipped,
the scorer's failures, aligned shares at the task's thresholds, score quantiles, for a scorer on another scale the
thresholds train.py takes, memory) and the lines it prints.
"""
import os
import resource
import time

import numpy as np

import scorers
from data import PreparedData, get_task
from transforms import scale_thresholds, score_sample

QUANTILES = (0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99)


def score_stats(task, splits):
    """Aligned shares at the task's thresholds (exact) and score quantiles (from at most 1M values per split)."""
    def count_le(arr, threshold, step=1 << 24):
        return sum(int(np.count_nonzero(arr[i:i + step] <= threshold)) for i in range(0, len(arr), step))

    n_seg = sum(d.n_segments for d in splits)
    n_doc = sum(d.n_documents for d in splits)
    seg = np.concatenate([score_sample(d.seg_scores) for d in splits])
    doc = np.concatenate([score_sample(d.doc_scores) for d in splits])
    return dict(
        aligned={
            'conditional': dict(threshold=task.cond_threshold, segments=sum(
                count_le(d.seg_scores, task.cond_threshold) for d in splits) / n_seg),
            'unlikelihood': dict(threshold=task.ul_threshold, segments=sum(
                count_le(d.seg_scores, task.ul_threshold) for d in splits) / n_seg),
            'filtering': dict(threshold=task.filter_threshold, documents=sum(
                count_le(d.doc_scores, task.filter_threshold) for d in splits) / n_doc)},
        segment_score_quantiles={f"{q:g}": float(v) for q, v in zip(QUANTILES, np.quantile(seg, QUANTILES))},
        document_score_quantiles={f"{q:g}": float(v) for q, v in zip(QUANTILES, np.quantile(doc, QUANTILES))})


def dir_bytes(path):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def print_summary(s):
    splits = ('train', 'val')
    print(f"{s['task']}: {s['documents']['train'] + s['documents']['val']:,} documents (train "
          f"{s['documents']['train']:,}, val {s['documents']['val']:,}), "
          f"{sum(s['segments'][k] for k in splits):,} segments, {sum(s['tokens'][k] for k in splits):,} tokens "
          f"from {s['input_bytes'] / 1e6:,.1f} MB of {s['source']} in {s['seconds']:.0f} s")
    if s['skipped']:
        print(f"skipped {sum(s['skipped'].values()):,}: " + ', '.join(f"{n:,} {r}" for r, n in s['skipped'].items())
              + f" (e.g. {s['skipped_examples'][0]})")
    if s['score_failures']:
        print(f"the scorer failed on {s['score_failures']:,} texts, scored 0 (e.g. {s['score_failure_examples'][0]})")
    if s.get('scorer_max_tokens'):
        print(f"{s['scorer']}: run in {s['scorer_dtype']}, each text cut at {s['scorer_max_tokens']:,} tokens, "
              f"the most the model reads")
    a = s['aligned']
    print(f"aligned ({s['scorer']} scores): {a['conditional']['segments']:.1%} of segments <= "
          f"{a['conditional']['threshold']:g} (conditional), {a['unlikelihood']['segments']:.1%} <= "
          f"{a['unlikelihood']['threshold']:g} (unlikelihood), {a['filtering']['documents']:.1%} of documents <= "
          f"{a['filtering']['threshold']:g} (filtering)")
    for what in ('segment', 'document'):
        print(f"{what} score quantiles: " + '  '.join(
            f"{float(q):.0%} {v:.3g}" for q, v in s[f'{what}_score_quantiles'].items()))
    if 'thresholds' in s:
        t, task = s['thresholds'], get_task(s['task'])
        given = ' '.join(f"--{k}={v:g}" for k, v in t.items() if v is not None and k != 'ul_soft')
        unknown = (f"; the paper's share of aligned segments for {task.name} is not known, so cond_threshold and "
                   f"ul_threshold are yours to choose from the quantiles above" if t['cond_threshold'] is None else '')
        print(f"not the {task.name} scorer's scale, so the paper's thresholds do not apply; train.py takes these, the "
              f"scores' quantiles at the paper's shares (data.TASKS), unless given: {given}{unknown}")
    print(f"{s['bytes_on_disk'] / 1e6:,.1f} MB on disk in {s['out_dir']}; peak RSS {s['peak_rss_mb']['main']:.0f} MB "
          f"(largest worker {s['peak_rss_mb']['largest_worker']:.0f} MB)")


def summarize(cfg, totals, staging, t0):
    """The summary of the output in staging, whose splits are complete."""
    splits = {split: PreparedData(os.path.join(staging, split)) for split in ('train', 'val')}
    ru_self, ru_children = (resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    task, scorer_desc = get_task(cfg.task), splits['train'].header['scorer']
    summary = dict(
        task=cfg.task, source=cfg.source, scorer=scorer_desc, out_dir=cfg.out_dir,
        documents={k: d.n_documents for k, d in splits.items()},
        segments={k: d.n_segments for k, d in splits.items()},
        tokens={k: d.n_tokens for k, d in splits.items()},
        input_bytes=totals['input_bytes'], bytes_on_disk=dir_bytes(staging), seconds=time.time() - t0,
        skipped=totals['skipped'], skipped_examples=totals['skipped_examples'],
        score_failures=totals['score_failures'], score_failure_examples=totals['score_failure_examples'],
        **score_stats(task, list(splits.values())),
        peak_rss_mb=dict(main=ru_self.ru_maxrss / 1024, largest_worker=ru_children.ru_maxrss / 1024),
        settings=dict(rescore=cfg.rescore, text_field=cfg.text_field, val_fraction=cfg.val_fraction,
                      min_val_docs=cfg.min_val_docs, max_docs=cfg.max_docs, max_bytes=cfg.max_bytes,
                      processes=cfg.processes))
    if totals['scored'] and hasattr(cfg.scorer, 'max_length'):
        summary['scorer_max_tokens'] = cfg.scorer.max_length()
        summary['scorer_dtype'] = cfg.scorer.precision()
    if not scorers.on_scale_of(scorer_desc, task.scorer):
        summary['thresholds'] = scale_thresholds(task, splits['train'])
    return summary
