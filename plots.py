"""
Plots of runs' evaluations (their eval.jsonl), the paper's Fig. 2 pictures: each scenario's misalignment score over
training, and each run's last score against its KL from the reference (or its validation loss) with the Pareto
frontier.

    python evaluate.py --plot out/pep8_mle out/pep8_cond --out=out/pep8     # runs' directories -> out/pep8_*.png
"""
import json
import os

from settings import EvalError


def pareto_front(points):
    """The (x, y) points not beaten on both axes (lower is better on both), sorted by x."""
    front = []
    for x, y in sorted(points):
        if not front or y < front[-1][1]:
            front.append((x, y))
    return front


def plot(run_dirs, out):
    """From runs' eval.jsonl: {out}_score_vs_tokens.png (each scenario's score over training, a line per run) and
    {out}_pareto.png (each run's last evaluation: score against KL from the reference, or against validation
    loss when a run has no KL; the Pareto frontier joined), the paper's Fig. 2 picture."""
    runs = {}
    for d in run_dirs:
        with open(os.path.join(d, 'eval.jsonl')) as f:
            runs[os.path.basename(os.path.normpath(d))] = [json.loads(line) for line in f if line.strip()]
    return plot_runs(runs, out)


def plot_runs(runs, out):
    """plot, from {run name: its evaluation records in order}."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    keys = sorted({k for rs in runs.values() for r in rs for k in r if k.endswith('/score')})
    if not keys:
        raise EvalError(f"no scores in the evaluations of {', '.join(runs)} (eval_samples was 0?)")
    x_key = 'kl' if all('kl' in rs[-1] for rs in runs.values()) else 'val_loss'
    os.makedirs(os.path.dirname(out) or '.', exist_ok=True)
    paths = []
    for name, draw in (('score_vs_tokens', _plot_curves), ('pareto', _plot_pareto)):
        fig, axes = plt.subplots(1, len(keys), figsize=(5.5 * len(keys), 4.2), squeeze=False)
        for ax, key in zip(axes[0], keys):
            draw(ax, runs, key, x_key)
            ax.set_title(key)
            ax.grid(alpha=0.3)
        fig.tight_layout()
        paths.append(f'{out}_{name}.png')
        fig.savefig(paths[-1], dpi=120)
        plt.close(fig)
    return paths


def _plot_curves(ax, runs, key, x_key):
    for name, rs in runs.items():
        pts = {r['tokens_seen']: r[key] for r in rs if key in r}  # the last evaluation of a step counts (resumes)
        if pts:
            ax.plot(*zip(*sorted(pts.items())), marker='.', label=name)
    ax.set(xlabel='tokens seen', ylabel='misalignment score')
    ax.legend(fontsize=7)


def _plot_pareto(ax, runs, key, x_key):
    pts = {name: (rs[-1][x_key], rs[-1][key]) for name, rs in runs.items() if key in rs[-1] and x_key in rs[-1]}
    for name, (x, y) in pts.items():
        ax.scatter(x, y)
        ax.annotate(name, (x, y), fontsize=7)
    if pts:
        ax.plot(*zip(*pareto_front(pts.values())), 'k--', lw=0.8, label='Pareto frontier')
        ax.legend(fontsize=7)
    ax.set(xlabel='KL(reference || model), nats' if x_key == 'kl' else 'validation loss', ylabel='misalignment score')
