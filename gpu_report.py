"""
The GPU check's report (gpu_check.py): DIR/gpu_check.json, the tables of DIR/gpu_check.md, and the parts' whole output
in DIR/gpu_check_logs.tar.gz (a lent machine gives back a few files). Pure functions of the parts' results.
"""
import os
import tarfile

import data


def markdown(parts, header):
    by_name = {p.name: p for p in parts}
    lines = [header, '', '| part | status | seconds (limit) |', '|---|---|---|']
    lines += [f"| {p.name} | {p.status} | {p.seconds:.0f} ({p.limit_s:.0f}) |" for p in parts]
    lines += training_table(by_name['train'].figures.get('rows', []))
    lines += sampling_table(by_name['sample'].figures.get('rows', []))
    lines += scoring_table(by_name['scoring'].figures.get('rows', []))
    objectives = [p for p in parts if p.name.startswith('objective:') and p.figures]
    if objectives:
        lines += ['', "## Each objective on config/gpu_small.py (train.py's defaults: compiled bf16 on CUDA)", '',
                  '| method | mean loss (steps) | mean loss (steps) | tokens/s | MFU |', '|---|---|---|---|---|']
        lines += [f"| {p.name.split(':')[1]} | {f['first_loss']:.4f} ({f['first_steps']}) | {f['last_loss']:.4f} "
                  f"({f['last_steps']}) | {f['tokens_per_s']:,.0f} | {percent(f['mfu'])} |"
                  for p, f in ((p, p.figures) for p in objectives)]
    if by_name['resume'].figures:
        lines += ['', 'resume: ' + ', '.join(f"{k} {v}" for k, v in by_name['resume'].figures.items())]
    if by_name['evaluate'].figures:
        f = by_name['evaluate'].figures
        shown = {k: v for k, v in f['evaluation'].items() if k in ('val_loss', 'heldout/gap') or k.endswith(
            ('/score', '/samples_per_s'))}
        lines += ['', 'evaluate: ' + ', '.join(f"{k} {v:.4g}" for k, v in shown.items()) +
                  f"; the export's logits within {f['export_max_abs_logit_diff']:.2g} of ours ({f['device']})"]
    if by_name['repro'].figures:
        lines += ['', '## repro.py', '', by_name['repro'].figures['results_md']]
    for p in parts:
        if p.status not in ('ok', 'pending'):
            lines += ['', f"## {p.name}: {p.status}", '', '```', p.tail.strip()[-2000:], '```']
    return '\n'.join(lines) + '\n'


def percent(x):
    return f"{100 * x:.1f}%" if x else '–'


def training_table(rows):
    rows = [r for r in rows if r['bench'] == 'train']
    if not rows:
        return []
    speed = {(r['impl'], r['objective']): r.get('tokens_per_s') for r in rows}
    lines = ['', '## Training throughput (bench.py: one process, same model and batch)', '',
             '| implementation | objective | batch | tokens/s | MFU | vs MLE | vs HF |', '|---' * 7 + '|']
    for r in rows:
        ratio = lambda base: f"{r['tokens_per_s'] / base:.3f}" if base and 'tokens_per_s' in r else '–'
        lines.append(f"| {r['impl']} | {r['objective']} | {r['batch_size']} | {r.get('tokens_per_s', r.get('error'))} "
                     f"| {percent(r.get('mfu'))} | {ratio(speed.get(('phf', 'mle')))} | "
                     f"{ratio(speed.get(('hf_gpt2', 'mle')))} |")
    return lines


def sampling_table(rows):
    rows = [r for r in rows if r['bench'] == 'sample']
    if not rows:
        return []
    lines = ['', '## Sampling (temperature 0.7, top-p 0.9)', '',
             '| implementation | samples × new tokens | batch | seconds | tokens/s |', '|---|---|---|---|---|']
    lines += [f"| {r['impl']} | {r['samples']} × {r['new_tokens']} | {r['batch_size']} | {r['seconds']} | "
              f"{r['tokens_per_s']:,} |" for r in rows if 'seconds' in r]
    lines += [f"\nours against HF's best: {r['speedup_vs_best_hf']}×" for r in rows if 'speedup_vs_best_hf' in r]
    lines += [f"\nour decode step {r['decode_step_ms']} ms against its output layer's matmul alone "
              f"{r['output_matmul_ms']} ms ({r['ratio']}×), batch {r['batch_size']}" for r in rows if 'ratio' in r]
    return lines


def scoring_table(rows):
    timed = [r for r in rows if r['bench'] == 'scoring' and 'seconds' in r]
    if not timed:
        return []
    lines = ['', "## Scoring (a BERT-base classifier in detoxify's format, the same texts)", '',
             '| implementation | device | texts | tokens | seconds | tokens/s |', '|---|---|---|---|---|---|']
    lines += [f"| {r['impl']} | {r['device']} | {r['segments']:,} | {r['tokens']:,} | {r['seconds']} | "
              f"{r['tokens_per_s']:,} |" for r in timed]
    for r in rows:
        if r['bench'] == 'scoring' and r['impl'] == 'ratio':
            lines.append('\n' + ', '.join(f"{k} {v}" for k, v in r.items() if k not in ('bench', 'impl', 'rank')))
        elif r['bench'] == 'scoring' and r['impl'] == 'classifier_tokenizer':
            lines.append(f"\nthe classifier's tokenizer alone: {r['tokens_per_s']:,} tokens/s")
    budgets = [r for r in rows if r['bench'] == 'scoring' and r['impl'].endswith('_budget')]
    if budgets:
        lines.append(f"\n{budgets[0]['impl'].removesuffix('_budget')} by its batch budget (padded tokens, * the "
                     f"default): " + ', '.join(f"{r['tokens_per_batch']:,}{'*' * r['default']} {r['tokens_per_s']:,} "
                                               f"tokens/s" for r in budgets))
    return lines


def write(parts, out, meta):
    """gpu_check.json (every part's status, seconds, limit, figures and output's tail) and gpu_check.md."""
    header = (f"# GPU check\n\n`{meta['command']}` on {meta['device']}, started "
              f"{meta['started']}; {meta['seconds']:.0f} s of a {meta['budget_s']} s budget.")
    data.write_json(os.path.join(out, 'gpu_check.json'), dict(meta, parts={
        p.name: dict(status=p.status, seconds=p.seconds, limit_s=p.limit_s, figures=p.figures, tail=p.tail[-2000:])
        for p in parts}), indent=1)
    data.write_atomically(os.path.join(out, 'gpu_check.md'), markdown(parts, header))


def pack_logs(out):
    """The parts' whole output and the repro runs' logs and results, in one file (a lent machine gives back a few)."""
    def small(info):
        name = os.path.basename(info.name)
        keep = info.isdir() or name.endswith(('.log', '.jsonl', '.md')) or name in ('results.json', 'settings.json')
        return info if keep else None
    with tarfile.open(os.path.join(out, 'gpu_check_logs.tar.gz'), 'w:gz') as tar:
        for folder in ('logs', 'repro'):
            if os.path.isdir(os.path.join(out, folder)):
                tar.add(os.path.join(out, folder), arcname=folder, filter=small)
