"""
The paper's comparison at small scale, on data that needs no download: prepare PEP8 from this machine's Python
sources, train each method on it with the same budget and seed, evaluate all the same way, write a table and plots.

    python repro.py pep8                           # CPU demo: MLE and conditional training, a few minutes each
    python repro.py pep8 --methods=all             # all six methods
    python repro.py pep8 --size=gpu --methods=all  # the single-GPU variant (see SIZES)

Results go to results/{task}_{size}/: results.md (the table), results.json, plot_score_vs_tokens.png and
plot_pareto.png (score against KL from the MLE model), and each method's run directory.
"""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

import data

METHODS = ('mle', 'filter', 'cond', 'ul', 'awr', 'rwr')
SIZES = {
    # config overlay and --key=value arguments on top of config/{task}_{method}.py; prepare.py arguments
    'cpu': dict(train=['config/cpu_small.py'], prepare=['--source=local']),
    'gpu': dict(train=['--n_layer=8', '--n_head=8', '--n_embd=512', '--block_size=512', '--batch_size=64',
                       '--total_batch_size=64', '--max_tokens=40_000_000', '--learning_rate=1e-3',
                       '--warmup_frac=0.02', '--eval_interval=400', '--eval_samples=1024', '--kl_samples=1024',
                       '--eval_max_new_tokens=256', '--ckpt_interval=500', '--log_interval=50'],
                prepare=['--source=local+site']),
}


def sh(cmd):
    print('$ ' + ' '.join(cmd), flush=True)
    subprocess.run([sys.executable] + cmd, check=True)


def last_eval(run_dir):
    """The last evaluation record of a run (train.py appends them to eval.jsonl)."""
    with open(os.path.join(run_dir, 'eval.jsonl')) as f:
        return json.loads(f.readlines()[-1])


COLUMNS = ('score', 'score_max@25', 'score_complete_lines', 'degenerate', 'distinct-1')  # per scenario


def table(task, rows):
    scenarios = data.TASKS[task].scenarios
    cols = [(s, m) for s in scenarios for m in COLUMNS if any(f'{s}/{m}' in r for r in rows.values())]
    head = ['method'] + [f"{s} {m}" for s, m in cols] + ['val loss', 'KL(MLE‖model)']
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for method, r in rows.items():
        cells = [method] + [f"{r[f'{s}/{m}']:.4g}" if f'{s}/{m}' in r else '–' for s, m in cols]
        cells += [f"{r.get('val_loss', float('nan')):.3f}", f"{r.get('kl', float('nan')):.2f}"]
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('task', choices=['pep8', 'pii'])
    p.add_argument('--size', choices=list(SIZES), default='cpu')
    p.add_argument('--methods', default='mle,cond', help="comma-separated, or 'all'")
    p.add_argument('--data_dir', default='data/local')
    p.add_argument('--results', default=None, help='default results/{task}_{size}')
    p.add_argument('--seed', type=int, default=42)
    p.add_argument('--extra', default='', help='more --key=value arguments for train.py, space-separated')
    args = p.parse_args(argv)
    methods = METHODS if args.methods == 'all' else tuple(args.methods.split(','))
    unknown = set(methods) - set(METHODS)
    if unknown:
        p.error(f"unknown methods {sorted(unknown)}; choose from {', '.join(METHODS)}")
    size = SIZES[args.size]
    results = args.results or f"results/{args.task}_{args.size}"
    os.makedirs(results, exist_ok=True)
    t0 = time.time()

    split = os.path.join(args.data_dir, args.task, 'train')
    if not os.path.exists(os.path.join(split, 'header.json')):
        sh(['prepare.py', args.task, f'--out_dir={os.path.join(args.data_dir, args.task)}'] + size['prepare'])
    train_data = data.PreparedData(split)
    # filtering at the median document score drops about half the documents (reference §1.2)
    median = float(np.median(np.asarray(train_data.doc_scores)))
    mle_ckpt = os.path.join(results, 'mle', 'ckpt.pt')
    order = sorted(methods, key=lambda m: m != 'mle')  # MLE first: it is the KL reference of the others
    for method in order:
        run_dir = os.path.join(results, method)
        train_argv = [f'config/{args.task}_{method}.py'] + size['train'] + [
            f'--data_dir={args.data_dir}', f'--out_dir={run_dir}', f'--seed={args.seed}',
            f'--filter_threshold={median}'] + args.extra.split()
        if os.path.exists(mle_ckpt):
            train_argv.append(f'--kl_reference={mle_ckpt}')
        if os.path.exists(os.path.join(run_dir, 'eval.jsonl')):
            print(f"{run_dir}: already evaluated, skipping (delete it to re-run)")
            continue
        sh(['train.py'] + train_argv)

    if 'mle' in methods and 'kl' not in last_eval(os.path.join(results, 'mle')):
        # the reference's KL from itself (0 up to float error), so every run has a point on the KL axis
        sh(['evaluate.py', f'--ckpt={mle_ckpt}', f'--kl_reference={mle_ckpt}'])
    rows = {m: last_eval(os.path.join(results, m)) for m in order}
    md = table(args.task, rows)
    header = (f"{args.task}, size {args.size}: `python repro.py {' '.join(sys.argv[1:] if argv is None else argv)}`"
              f"\n\ntraining tokens {train_data.n_tokens:,}; filter threshold (median document score) {median:.5g}; "
              f"{(time.time() - t0) / 60:.1f} min in this call\n\n")
    with open(os.path.join(results, 'results.md'), 'w') as f:
        f.write(header + md + '\n')
    with open(os.path.join(results, 'results.json'), 'w') as f:
        json.dump(dict(task=args.task, size=args.size, filter_threshold=median, runs=rows), f, indent=1)
    import evaluate
    evaluate.plot([os.path.join(results, m) for m in order], os.path.join(results, 'plot'))
    print('\n' + header + md)


if __name__ == '__main__':
    main()
