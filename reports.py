"""
The report of a repro.py results folder, a pure function of what its runs' directories hold: the table of runs repro.py
makes (RunSpec), each run's figures with intervals, the verdicts against MLE (one seed: among that seed's samples; over
seeds: paired t), the held-out gap beside them (heldout.py), the table over seeds and the plots; written to results.md,
results.json and plot_*.png.
"""
import json
import os
from dataclasses import dataclass

import numpy as np

import data
import heldout
import plots
import stats
from data import METHODS


class ReproError(Exception):
    pass


# ----------------------------------------------------------------------------------------------------------------
# The runs of a seed

@dataclass(frozen=True)
class RunSpec:
    """One run of a seed: what repro.py trains (or samples again) and how the report names and compares it."""
    name: str  # its folder seed{S}/{name}, and what --methods and the report call it
    method: str  # a key of data.METHODS
    config: str  # trained from config/{task}_{config}.py
    train_args: tuple = ()  # and these train.py arguments
    in_paper: bool = True  # False: also compared with cond, the paper's best method
    guidance: float = 0.0  # not 0: not trained; the seed's cond model sampled again with guidance γ (evaluate.py)


# MLE again from other initial weights on the same data order: how far a second run of one recipe moves the figures
# (an A/A baseline), and a second baseline for the other methods
SECOND_MLE = 'mle_reinit'
RUN_SPECS = tuple(RunSpec(name, name, name, in_paper=m.in_paper) for name, m in METHODS.items()) + (
    RunSpec('cond_k5', 'cond', 'cond_k5', in_paper=False),  # K = 5 graded control tokens
    RunSpec(SECOND_MLE, 'mle', 'mle', ('--init_seed_offset=1000',)),
)
RUNS = tuple(spec.name for spec in RUN_SPECS)  # what --methods may name
SPEC_OF_RUN = {spec.name: spec for spec in RUN_SPECS}
GUIDED = 'cond_guided'  # run names cond_guided{γ}: the cond model of the seed, sampled with guidance γ


def guided_spec(guidance):
    return RunSpec(f'{GUIDED}{guidance:g}', 'cond', 'cond', in_paper=False, guidance=guidance)


def run_spec(name):
    """The RunSpec a run's name stands for (its folder and the report's keys are named so)."""
    if name in SPEC_OF_RUN:
        return SPEC_OF_RUN[name]
    if name.startswith(GUIDED):
        return guided_spec(float(name[len(GUIDED):]))
    raise ReproError(f"{name}: not a run repro.py makes; the runs are {', '.join(RUNS)} and {GUIDED}{{γ}}")


def run_order(name):
    """Runs in METHODS order, after cond its guided evaluations by γ, then its variants."""
    spec = run_spec(name)
    if spec.guidance:
        return list(METHODS).index(spec.method), 1, spec.guidance
    if name not in METHODS:
        return list(METHODS).index(spec.method), 2, RUNS.index(name)
    return list(METHODS).index(name), 0, 0


def conditional(name):
    """Whether a run is a conditional model's own, so that it was also sampled after <|misaligned|> (a guided
    evaluation samples it after <|aligned|> only)."""
    spec = run_spec(name)
    return METHODS[spec.method].conditional and not spec.guidance


def run_label(run_name, scenario):
    """(method, what its samples come after) as the report shows them."""
    spec = run_spec(run_name)
    if spec.guidance:
        return spec.method, f"<|aligned|> γ={spec.guidance:g}"
    if scenario == 'misaligned':
        return run_name, '<|misaligned|>'
    return run_name, '<|aligned|>' if conditional(run_name) else 'unconditional'


def beyond_the_paper(name):
    """Whether a run is one of the techniques beyond the paper (guided sampling, graded tokens, masking): each is also
    compared with conditional training, the paper's best method, over the seeds."""
    return not run_spec(name).in_paper


# ----------------------------------------------------------------------------------------------------------------
# What the runs' directories hold

def read_evals(run_dir):
    with open(os.path.join(run_dir, 'eval.jsonl')) as f:
        return [json.loads(line) for line in f if line.strip()]


def collect(results, seeds, names):
    """{seed: {run name: {'record': last evaluation, 'history': records, 'scores': {scenario: every sample's score},
    'heldout': {'heldout' or 'heldout_misaligned': {variant: per-document sums}}}}} (eval_step{N}.json of the last
    evaluation holds the scores and sums); the MLE model is its own KL reference, at 0."""
    runs = {}
    for seed in seeds:
        runs[seed] = {}
        for name in sorted(names, key=run_order):
            run_dir = os.path.join(results, f'seed{seed}', name)
            history = read_evals(run_dir)
            if name == 'mle':
                history[-1] = dict(history[-1], kl=0.0)
            with open(os.path.join(run_dir, f"eval_step{history[-1]['step']}.json")) as f:
                last = json.load(f)
            runs[seed][name] = dict(record=history[-1], history=history, scores=last['scores'],
                                    heldout=last.get('heldout', {}))
    return runs


# ----------------------------------------------------------------------------------------------------------------
# Verdicts: each method's samples against MLE's, with intervals (stats.py)

def compare(scores, baseline, threshold):
    """A method's scores against the baseline's: ratios of hit rate and mean score, and the verdicts from the bootstrap
    intervals of the differences."""
    s, b = np.asarray(scores, dtype=float), np.asarray(baseline, dtype=float)
    hit_diff = stats.bootstrap_difference(s > threshold, b > threshold)
    score_diff = stats.bootstrap_difference(s, b)
    ratio = lambda x, y: x / y if y else float('nan')
    return dict(hit_ratio=ratio((s > threshold).mean(), (b > threshold).mean()), score_ratio=ratio(s.mean(), b.mean()),
                hit_diff_ci=hit_diff, score_diff_ci=score_diff,
                hit_verdict=stats.verdict(hit_diff), score_verdict=stats.verdict(score_diff))


def fmt_run(f):
    lo, hi = f['hit_rate_ci']
    slo, shi = f['score_ci']
    return (f"hits {100 * f['hit_rate']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}] ({f['hits']}/{f['n']}), "
            f"score {f['score']:.3g} [{slo:.3g}, {shi:.3g}]")


def verdict_lines(task, seed, runs):
    """One line per method and scenario: the figures with intervals, how they compare with MLE's samples, and for
    conditional models how the samples after <|aligned|> compare with those after <|misaligned|> (the mechanism)."""
    threshold = data.TASKS[task].hit_threshold
    lines, figures = [], {}
    base = runs.get('mle', {}).get('scores', {}).get('unconditional')
    for method, run in runs.items():
        for scenario, scores in run['scores'].items():
            if scenario not in ('unconditional', 'misaligned') or not scores:
                continue
            f = stats.scenario_figures(scores, threshold)
            name, label = run_label(method, scenario)
            line = f"seed {seed} {name:6s} {label:15s} {fmt_run(f)}"
            if base is not None and method != 'mle':
                c = compare(scores, base, threshold)
                f.update(c)
                line += f"; vs MLE: {fmt_compare(c)}"
            if scenario == 'unconditional' and 'val_loss' in run.get('record', {}):
                line += f"; val loss {run['record']['val_loss']:.2f}"
            figures[f'{method}/{scenario}'] = f
            lines.append(line)
        aligned, misaligned = run['scores'].get('unconditional'), run['scores'].get('misaligned')
        if conditional(method) and aligned and misaligned:
            c = compare(aligned, misaligned, threshold)
            figures[f'{method}/aligned_vs_misaligned'] = c
            lines.append(f"seed {seed} {method:6s} <|aligned|> vs <|misaligned|>: {fmt_compare(c)}")
    return lines, figures


def across_seeds(figures, runs):
    """With two seeds or more: per run and scenario, the mean over seeds of its difference from MLE's hit rate and
    score, with the paired t interval (each seed trained both ways) and the verdict; and cond's <|aligned|> minus
    <|misaligned|> the same way (the mechanism)."""
    seeds = list(figures)
    if len(seeds) < 2:
        return []
    lines = []

    def hit_differences(key, base):
        return [figures[s][key]['hit_rate'] - figures[s][base]['hit_rate'] for s in seeds
                if key in figures[s] and base in figures[s]]

    # the spread of one recipe's runs: the A/A differences' sd / √2, where the second MLE run ran in two seeds or more
    aa = hit_differences(f'{SECOND_MLE}/unconditional', 'mle/unconditional')
    noise = np.std(aa, ddof=1) / np.sqrt(2) if len(aa) > 1 else 0

    def line(what, key, base):
        """The paired interval of key's figures minus base's, over the seeds that have both (at least two)."""
        pairs = [(figures[s][key], figures[s][base]) for s in seeds if key in figures[s] and base in figures[s]]
        if len(pairs) < 2:
            return
        hit = [a['hit_rate'] - b['hit_rate'] for a, b in pairs]
        score = [a['score'] - b['score'] for a, b in pairs]
        hit_ci, score_ci = stats.paired_t_interval(hit), stats.paired_t_interval(score)
        snr = f"; hits signal/noise {abs(np.mean(hit)) / noise:.1f}" if noise and base == 'mle/unconditional' and \
            not key.startswith(SECOND_MLE) else ''
        lines.append(f"across {len(pairs)} seeds, {what}: hits {100 * np.mean(hit):+.2f} points "
                     f"[{100 * hit_ci[0]:+.2f}, {100 * hit_ci[1]:+.2f}] ({stats.verdict(hit_ci)}), score "
                     f"{np.mean(score):+.3g} [{score_ci[0]:+.3g}, {score_ci[1]:+.3g}] ({stats.verdict(score_ci)}){snr}")

    names = sorted({name for rs in runs.values() for name in rs}, key=run_order)
    for name in names:
        for scenario in ('unconditional', 'misaligned') if name != 'mle' else ():
            method, label = run_label(name, scenario)
            line(f"{method} {label} minus MLE", f'{name}/{scenario}', 'mle/unconditional')
    for name in filter(conditional, names):
        line(f"{name} <|aligned|> minus <|misaligned|>", f'{name}/unconditional', f'{name}/misaligned')
    for name in filter(beyond_the_paper, names):
        method, label = run_label(name, 'unconditional')
        line(f"{method} {label} minus cond <|aligned|>", f'{name}/unconditional', 'cond/unconditional')
    for name in [n for n in names if n in METHODS and n != 'mle']:  # against the second MLE run too
        method, label = run_label(name, 'unconditional')
        line(f"{method} {label} minus {SECOND_MLE}", f'{name}/unconditional', f'{SECOND_MLE}/unconditional')
    return lines


def headline(task, figures):
    """The verdict lines the report opens with, where MLE and conditional training both ran. First what the control
    tokens do: one model sampled after each, so a difference between the two is the model's, whatever its training
    noise. Then conditional training against MLE: two models, so over the seeds (stats.verdict_over_seeds), since a
    second run of one recipe from other initial weights can land as far from the first as the methods differ."""
    seeds = [s for s in figures if {'cond/aligned_vs_misaligned', 'mle/unconditional'} <= set(figures[s])]
    if not seeds:
        return []
    hit_name = data.TASKS[task].hit_name
    pct = lambda f: f"{100 * f['hit_rate']:.1f}% [{100 * f['hit_rate_ci'][0]:.1f}, {100 * f['hit_rate_ci'][1]:.1f}]"
    aligned, misaligned, mle = ([figures[s][f'{k}'] for s in seeds] for k in (
        'cond/unconditional', 'cond/misaligned', 'mle/unconditional'))
    gap, vs_mle = ([figures[s][k]['hit_verdict'] for s in seeds] for k in (
        'cond/aligned_vs_misaligned', 'cond/unconditional'))
    if len(seeds) == 1:
        tokens = (f"{pct(aligned[0])} after <|aligned|>, {pct(misaligned[0])} after <|misaligned|> "
                  f"(x{figures[seeds[0]]['cond/aligned_vs_misaligned']['hit_ratio']:.2f}): {gap[0]}")
        methods = (f"{pct(aligned[0])} against MLE's {pct(mle[0])} (x{aligned[0]['hit_ratio']:.2f}): {vs_mle[0]} "
                   f"among this seed's samples; between the methods {stats.ONE_SEED}, since a second training run "
                   f"of one recipe can move the rate as far: --seeds=42,43,44,45 decides it over seeds")
    else:
        def over_seeds(a, b, lower):
            mean, (lo, hi), verdict = stats.verdict_over_seeds([x['hit_rate'] - y['hit_rate'] for x, y in zip(a, b)])
            return (f"{100 * mean:+.1f} points [{100 * lo:+.1f}, {100 * hi:+.1f}] over the seeds (paired t): "
                    f"{verdict}; lower, beyond noise, in {lower.count('lower, beyond noise')} of {len(seeds)} seeds")
        tokens = f"<|aligned|> minus <|misaligned|> {over_seeds(aligned, misaligned, gap)}"
        methods = f"conditional minus MLE {over_seeds(aligned, mle, vs_mle)}"
    where = f"seed {seeds[0]}" if len(seeds) == 1 else f"{len(seeds)} seeds, {', '.join(map(str, seeds))}"
    return [f"Verdict ({where}), the share of samples with {hit_name}:",
            f"- the control tokens, one model sampled after each: {tokens}",
            f"- conditional training against MLE, two models: {methods}"]


# ----------------------------------------------------------------------------------------------------------------
# The held-out gap (heldout.py): no sampling in it; a difference between two models is bootstrapped over the same
# held-out documents

HELDOUT_SCENARIO = {'heldout': 'unconditional', 'heldout_misaligned': 'misaligned'}  # the key: as samples are named
VARIANT_LABEL = {'gap': 'held-out gap', 'gap_first4': 'first 4 tokens'}
DECIDING_VARIANT = 'gap_first4'
VALIDATION = ('one seed decides this measure: over six seeds of PII on the changelogs, two MLE runs of one recipe '
              'stayed inside its noise in 6 and conditional training was above MLE beyond it in 6 '
              '(results/heldout_gap_validation/README.md)')


def heldout_figures(runs):
    """{f'{run}/{scenario}': {variant: dict(gap, ci, and against MLE: diff, diff_ci, verdict)}} of one seed's runs,
    and f'{run}/aligned_vs_misaligned' for a conditional model: its gap under <|aligned|> minus under <|misaligned|>,
    one model, the same documents."""
    figures = {}
    base = runs.get('mle', {}).get('heldout', {}).get('heldout', {})
    for name, run in runs.items():
        for prefix, sums_of in run['heldout'].items():
            key = f'{name}/{HELDOUT_SCENARIO[prefix]}'
            figures[key] = {v: dict(gap=float(heldout.gap(sums)), ci=heldout.gap_interval(sums),
                                    documents=len(sums)) for v, sums in sums_of.items()}
            for v, f in figures[key].items():
                if name != 'mle' and v in base:
                    f.update(against(sums_of[v], base[v]))
        aligned, misaligned = (run['heldout'].get(p, {}) for p in ('heldout', 'heldout_misaligned'))
        if aligned and misaligned:
            figures[f'{name}/aligned_vs_misaligned'] = {v: against(aligned[v], misaligned[v]) for v in aligned
                                                        if v in misaligned}
    return figures


def against(sums, baseline):
    """gap(sums) − gap(baseline) with its paired bootstrap interval and verdict."""
    interval = heldout.gap_interval(sums, baseline)
    return dict(diff=float(heldout.gap(sums) - heldout.gap(baseline)), diff_ci=interval,
                verdict=stats.verdict(interval))


def heldout_headline(task, figures):
    """The verdict lines of the held-out gap: conditional training against MLE in DECIDING_VARIANT, the variant that
    separated the two from one seed while two MLE runs of one recipe stayed inside its noise (VALIDATION). One seed:
    the paired bootstrap over held-out documents; several: the paired t over the seeds."""
    per_seed = [figures[s]['cond/unconditional'][DECIDING_VARIANT] for s in figures
                if 'diff' in figures[s].get('cond/unconditional', {}).get(DECIDING_VARIANT, {})]
    if not per_seed:
        return []
    segment = data.TASKS[task].segment[:-1]
    if len(per_seed) == 1:
        f = per_seed[0]
        (lo, hi), n = f['diff_ci'], f['documents']
        figure = (f"{f['diff']:+.3f} [{lo:+.3f}, {hi:+.3f}] (paired bootstrap over {n} held-out documents): "
                  f"{f['verdict']}; {VALIDATION}")
    else:
        mean, (lo, hi), verdict = stats.verdict_over_seeds([f['diff'] for f in per_seed])
        beyond = sum(f['verdict'] == 'higher, beyond noise' for f in per_seed)
        figure = (f"{mean:+.3f} [{lo:+.3f}, {hi:+.3f}] over the seeds (paired t): {verdict}; higher, beyond noise, "
                  f"in {beyond} of {len(per_seed)} seeds")
    return [f"Held-out text, no sampling: how much less likely a model finds the first {heldout.FIRST_TOKENS} tokens "
            f"of a {segment} with {data.TASKS[task].hit_name} than of one without, in nats per token:",
            f"- conditional training against MLE, two models: conditional minus MLE {figure}"]


def heldout_lines(seed, figures):
    """One line per run and control token: each variant's gap with its interval, and its difference from MLE's."""
    lines = []
    for key, per_variant in figures.items():
        name, scenario = key.split('/')
        if scenario == 'aligned_vs_misaligned':
            parts = [f"{VARIANT_LABEL[v]} {fmt_diff(f)}" for v, f in per_variant.items()]
            lines.append(f"seed {seed} {name:6s} held-out, <|aligned|> minus <|misaligned|>: {'; '.join(parts)}")
            continue
        parts = [f"{VARIANT_LABEL[v]} {f['gap']:+.3f} [{f['ci'][0]:+.3f}, {f['ci'][1]:+.3f}]" +
                 (f", vs MLE {fmt_diff(f)}" if 'diff' in f else '') for v, f in per_variant.items()]
        method, label = run_label(name, scenario)
        lines.append(f"seed {seed} {method:6s} {label:15s} {'; '.join(parts)}")
    return lines


def fmt_diff(f):
    lo, hi = f['diff_ci']
    return f"{f['diff']:+.3f} [{lo:+.3f}, {hi:+.3f}] ({f['verdict']})"


def heldout_across_seeds(figures):
    """With two seeds or more: per run and control token, each variant's difference from MLE over the seeds (paired
    t), in how many seeds it was beyond noise, and, where the second MLE run ran, signal against noise: the mean
    difference over the spread of one recipe's runs (the A/A differences' sd / √2)."""
    seeds = list(figures)
    if len(seeds) < 2:
        return []
    lines = []
    keys = sorted({k for per_seed in figures.values() for k in per_seed},
                  key=lambda k: (run_order(k.split('/')[0]), k.split('/')[1]))
    for key in keys:
        name, scenario = key.split('/')
        method, label = run_label(name, scenario)
        what = f"{name} <|aligned|> minus <|misaligned|>" if scenario == 'aligned_vs_misaligned' else \
            f"{method} {label} minus MLE"
        for v in VARIANT_LABEL:
            per_seed = [figures[s][key][v] for s in seeds if v in figures[s].get(key, {})]
            per_seed = [f for f in per_seed if 'diff' in f]
            if len(per_seed) < 2:
                continue
            mean, (lo, hi), verdict = stats.verdict_over_seeds([f['diff'] for f in per_seed])
            beyond = sum(not f['verdict'].startswith('no difference') for f in per_seed)
            noise = run_spread(figures, v)
            snr = f"; signal/noise {abs(mean) / noise:.1f}" if noise and name != SECOND_MLE else ''
            lines.append(f"across {len(per_seed)} seeds, {what}, {VARIANT_LABEL[v]}: {mean:+.3f} [{lo:+.3f}, "
                         f"{hi:+.3f}] ({verdict}); beyond noise in {beyond} of {len(per_seed)} seeds{snr}")
    return lines


def run_spread(figures, variant):
    """The spread of one recipe's runs in a variant of the held-out gap: the sd over seeds of the second MLE run's
    difference from MLE, / √2 (None without two such seeds)."""
    diffs = [f[f'{SECOND_MLE}/unconditional'][variant]['diff'] for f in figures.values()
             if variant in f.get(f'{SECOND_MLE}/unconditional', {})]
    return float(np.std(diffs, ddof=1) / np.sqrt(2)) if len(diffs) > 1 else None


def fmt_compare(c):
    return (f"hits x{c['hit_ratio']:.2f} ({c['hit_verdict']}), score x{c['score_ratio']:.2f} "
            f"({c['score_verdict']})")


# ----------------------------------------------------------------------------------------------------------------
# The table over seeds

def mean_cell(evals, key, spec):
    """The mean of a figure over the runs' evaluations, saying over how many where not all have it; '–' where none
    has it (a guided run is the conditional model sampled again, so it has no validation loss of its own)."""
    values = [e[key] for e in evals if key in e]
    if not values:
        return '–'
    return format(np.mean(values), spec) + ('' if len(values) == len(evals) else f" ({len(values)} of {len(evals)})")


def seeds_table(figures, runs):
    """Per method and scenario: hit rate and score as mean ± standard deviation over seeds, the per-run intervals,
    how many seeds are below MLE beyond noise, validation loss (all tokens, and those of aligned segments only), the
    held-out gap (under <|misaligned|> in a conditional model's misaligned row), KL(MLE || model), the samples'
    distinct bigrams (diversity) and sampling speed, means over seeds."""
    head = ['method', 'samples after', 'seeds', 'hit rate, mean ± sd', 'score, mean ± sd', 'per-run hit rate [95%]',
            'per-run score [95%]', 'below MLE beyond noise (hits / score)', 'val loss', 'val loss, aligned tokens',
            'held-out gap (all / first 4 tokens)', 'KL(MLE‖model)', 'distinct-2', 'samples/s']
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    keys = sorted({k for per_seed in figures.values() for k in per_seed if not k.endswith('/aligned_vs_misaligned')},
                  key=lambda k: (run_order(k.split('/')[0]), k.split('/')[1] != 'unconditional'))  # <|aligned|> first
    for key in keys:
        method, scenario = key.split('/')
        rows = [(seed, per_seed[key]) for seed, per_seed in figures.items() if key in per_seed]
        hit_m, hit_s = stats.mean_and_spread([f['hit_rate'] for _, f in rows])
        sc_m, sc_s = stats.mean_and_spread([f['score'] for _, f in rows])
        below = [sum(f.get(v) == 'lower, beyond noise' for _, f in rows) for v in ('hit_verdict', 'score_verdict')]
        evals = [runs[seed][method]['record'] for seed, _ in rows]
        name, after = run_label(method, scenario)
        heldout_prefix = next(p for p, s in HELDOUT_SCENARIO.items() if s == scenario)
        cells = [name, 'nothing' if after == 'unconditional' else after, str(len(rows)),
                 f"{100 * hit_m:.2f}% ± {100 * hit_s:.2f}", f"{sc_m:.3g} ± {sc_s:.2g}",
                 '; '.join(f"{100 * f['hit_rate']:.1f} [{100 * f['hit_rate_ci'][0]:.1f}, "
                           f"{100 * f['hit_rate_ci'][1]:.1f}]" for _, f in rows),
                 '; '.join(f"{f['score']:.2g} [{f['score_ci'][0]:.2g}, {f['score_ci'][1]:.2g}]" for _, f in rows),
                 '–' if method == 'mle' else f"{below[0]} / {below[1]} of {len(rows)}",
                 mean_cell(evals, 'val_loss', '.3f'), mean_cell(evals, 'val_loss_aligned', '.3f'),
                 ' / '.join(mean_cell(evals, f"{heldout_prefix}/{v}", '+.3f') for v in VARIANT_LABEL),
                 mean_cell(evals, 'kl', '.2f'),
                 mean_cell(evals, f'{scenario}/distinct-2', '.3f'),
                 mean_cell(evals, f'{scenario}/samples_per_s', '.1f')]
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def write_report(results, seeds, names, about):
    """results.md (the verdict, each run's lines, the held-out gap, the table over seeds), results.json and the plots
    of the runs `names` of each seed, from what their directories hold; the verdicts printed too. about: the call's
    task, size, command, setting (a sentence for the header) and filter_threshold."""
    task = about['task']
    runs = collect(results, seeds, names)
    lines, figures, held = [], {}, {}
    for seed in seeds:
        seed_lines, figures[seed] = verdict_lines(task, seed, runs[seed])
        held[seed] = heldout_figures(runs[seed])
        lines += seed_lines + heldout_lines(seed, held[seed])
    lines += across_seeds(figures, runs) + heldout_across_seeds(held)
    verdict = headline(task, figures) + heldout_headline(task, held)
    header = (f"{task}, size {about['size']}: `{about['command']}`\n\n{about['setting']}. Hit: a sample scored above "
              f"{data.TASKS[task].hit_threshold}; intervals 95% (Wilson for hit rates, bootstrap for means and for the "
              f"differences from MLE that the verdicts rest on; the held-out gap's over held-out documents)\n\n")
    verdict_first = verdict + [''] * bool(verdict) + lines
    data.write_atomically(os.path.join(results, 'results.md'), header + '```\n' + '\n'.join(verdict_first) +
                          '\n```\n\n' + seeds_table(figures, runs) + '\n')
    data.write_json(os.path.join(results, 'results.json'), dict(
        task=task, size=about['size'], filter_threshold=about['filter_threshold'], figures=figures, heldout=held,
        runs={s: {m: r['record'] for m, r in rs.items()} for s, rs in runs.items()}), indent=1)
    label = (lambda s, m: m) if len(seeds) == 1 else (lambda s, m: f'{m}/seed{s}')
    plots.plot_runs({label(s, m): r['history'] for s, rs in runs.items() for m, r in rs.items()},
                       os.path.join(results, 'plot'))
    print('\n' + header + '\n'.join(lines + [''] * bool(verdict) + verdict))
