"""repro.py end to end on a tiny model and dataset (all seven methods and graded tokens), and bench.py's CPU mode."""
import json
import math
import os
import subprocess
import sys

import pytest
import torch

import bench
import reports
import repro
from conftest import ROOT_DIR, make_dataset


def test_repro_all_methods(tmp_path, monkeypatch, capsys):
    """The demo's path (python repro.py pii), at a tiny size: every method, the verdicts, the table, the plots."""
    monkeypatch.chdir(ROOT_DIR)
    tiny_data = make_dataset(str(tmp_path / 'data'), task='pii')
    results = str(tmp_path / 'results')
    tiny = ('--n_layer=1 --n_head=1 --n_embd=16 --block_size=32 --batch_size=2 --total_batch_size=2 '
            '--max_tokens=256 --eval_iters=1 --eval_batch_size=2 --eval_samples=4 --eval_max_new_tokens=8 '
            '--kl_samples=4 --log_interval=2')
    argv = ['pii', '--methods=all', f'--data_dir={tiny_data}', f'--results={results}', f'--extra={tiny}',
            '--guidance=0,1.5']
    repro.main(argv)
    summary = json.load(open(os.path.join(results, 'results.json')))
    assert list(summary['runs']['42']) == ['mle', 'mle_reinit', 'filter', 'cond', 'cond_guided1.5', 'cond_k5', 'ul',
                                           'awr', 'rwr', 'mask']
    guided = summary['runs']['42']['cond_guided1.5']
    assert guided['guidance'] == 1.5 and guided['step'] == summary['runs']['42']['cond']['step']
    assert 'val_loss' not in guided and math.isfinite(guided['kl'])
    for method, row in summary['runs']['42'].items():
        if method == 'cond_guided1.5':
            continue
        assert row['method'] == reports.run_spec(method).method
        assert row['val_loss'] > 0 and row['val_loss_aligned'] > 0 and 'unconditional/score' in row
        # the MLE model is the KL reference: 0 by definition; the others' is an estimate from 4 samples
        assert row['kl'] == 0 if method == 'mle' else math.isfinite(row['kl']) and row['kl'] != 0
    figures = summary['figures']['42']
    assert set(figures) == {f'{m}/unconditional' for m in reports.RUNS + ('cond_guided1.5',)} | {
        f'{m}/{s}' for m in ('cond', 'cond_k5') for s in ('misaligned', 'aligned_vs_misaligned')}
    assert figures['mle/unconditional']['n'] == 4 and 'hit_verdict' in figures['cond/misaligned']
    report = open(os.path.join(results, 'results.md')).read()
    assert report.count('\n| ') == 13  # header, 9 runs, cond and cond_k5 after <|misaligned|>, cond guided
    assert report.count('\nseed 42 ') == 14 + 13  # 9 runs, cond and cond_k5 after <|misaligned|> and compared, guided;
    # and the held-out gap: the 9 runs, cond and cond_k5 under <|misaligned|> and compared (the guided run: cond's)
    assert sum(' held-out gap ' in line for line in report.splitlines() if line.startswith('seed 42 ')) == 13
    held = summary['heldout']['42']
    assert set(held) == {f'{m}/unconditional' for m in repro.RUNS} | {
        f'{m}/{s}' for m in ('cond', 'cond_k5') for s in ('misaligned', 'aligned_vs_misaligned')}
    assert set(held['cond/unconditional']) == {'gap', 'gap_first4'} and 'diff' not in held['mle/unconditional']['gap']
    assert held['cond/unconditional']['gap']['gap'] == pytest.approx(summary['runs']['42']['cond']['heldout/gap'])
    assert '\nseed 42 cond   <|aligned|> γ=1.5 hits ' in report and '| cond | <|aligned|> γ=1.5 | 1 |' in report
    rows = [tuple(r.split(' | ')[:2]) for r in report.splitlines() if r.startswith('| ') and '---' not in r]
    assert rows == [('| method', 'samples after'), ('| mle', 'nothing'), ('| mle_reinit', 'nothing'),
                    ('| filter', 'nothing'), ('| cond', '<|aligned|>'), ('| cond', '<|misaligned|>'),
                    ('| cond', '<|aligned|> γ=1.5'), ('| cond_k5', '<|aligned|>'), ('| cond_k5', '<|misaligned|>'),
                    ('| ul', 'nothing'), ('| awr', 'nothing'), ('| rwr', 'nothing'), ('| mask', 'nothing')]
    assert 'across' not in report  # one seed: no interval over seeds
    guided_row = next(r for r in report.splitlines() if r.startswith('| cond | <|aligned|> γ=1.5 |')).split(' | ')
    assert guided_row[8] == guided_row[9] == '–'  # no validation losses: the weights are cond's
    assert guided_row[10] == '– / –'  # nor a held-out gap
    assert float(guided_row[11]) == pytest.approx(guided['kl'], abs=0.01)
    assert not [r for r in report.splitlines() if r.startswith('| ') and 'nan' in r]  # (0/0 ratios print xnan)
    for name in ('plot_score_vs_tokens.png', 'plot_pareto.png'):
        assert os.path.getsize(os.path.join(results, name)) > 1000
    capsys.readouterr()
    repro.main(argv)  # a second call trains nothing
    assert 'already evaluated, skipping' in capsys.readouterr().out
    with pytest.raises(SystemExit, match='holds runs made with other settings \\(train_args differ'):
        repro.main(argv[:-1] + [f'--extra={tiny} --learning_rate=0.1'])


def test_repro_bad_input_ends_in_one_line(tmp_path, monkeypatch, capsys):
    """Bad arguments, another working folder, a failing train.py and Ctrl-C: a message, no traceback."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        repro.main(['pii'])
    assert e.value.code == 2 and f"run it from the repository's folder: cd {ROOT_DIR}" in capsys.readouterr().err
    monkeypatch.chdir(ROOT_DIR)
    with pytest.raises(SystemExit) as e:
        repro.main(['pii', '--seeds=42,4a'])
    assert e.value.code == 2 and '--seeds=42,4a: expected integers separated by commas' in capsys.readouterr().err
    tiny_data = make_dataset(str(tmp_path / 'data'), task='pii')
    argv = ['pii', f'--data_dir={tiny_data}', f'--results={tmp_path}/results', '--extra=--bogus=1']
    with pytest.raises(SystemExit, match=r"^error: --bogus=1: unknown key 'bogus'; the keys are the fields of "
                                         r"TrainConfig in settings.py$"):  # before anything is trained
        repro.main(argv)
    assert not os.path.exists(tmp_path / 'results' / 'seed42')
    argv[-1] = f'--extra=--init_from={tmp_path}/none.pt'  # a setting train.py itself refuses
    with pytest.raises(SystemExit, match=r"^error: train.py \(seed 42 mle\) exited with status 1; train.py \(seed 42 "
                                         r"cond\) exited with status 1; once the cause is fixed, the same repro.py "
                                         r"command goes on from there \(finished runs are kept\)$"):
        repro.main(argv)  # the two runs train side by side
    with pytest.raises(SystemExit, match=r"^error: train.py exited with status 1; once its cause is fixed, the same "
                                         r"repro.py command goes on from there \(finished runs are kept\)$"):
        repro.main(argv + ['--side_by_side=1'])

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(repro.subprocess, 'Popen', interrupted)
    with pytest.raises(SystemExit, match=rf"^interrupted; `python repro.py {' '.join(argv)}` goes on from where it "
                                         rf"stopped$"):
        repro.main(argv)


def test_results_folder_records_the_training_device_and_dtype(tmp_path, monkeypatch):
    import devices
    monkeypatch.setattr(devices.torch.cuda, 'is_available', lambda: False)
    monkeypatch.setattr(devices, 'cpu_has_native_bf16', lambda: True)
    assert repro.training_device_and_dtype(['config/cpu_small.py']) == ('cpu', 'bfloat16')
    # the last one counts
    assert repro.training_device_and_dtype(['--dtype=bfloat16', '--dtype=float32']) == ('cpu', 'float32')
    monkeypatch.setattr(devices, 'cpu_has_native_bf16', lambda: False)
    assert repro.training_device_and_dtype([]) == ('cpu', 'float32')
    # with a GPU the demo's size trains there: config/cpu_small.py leaves the device to 'auto'
    monkeypatch.setattr(devices.torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(devices.torch.cuda, 'is_bf16_supported', lambda: True)
    assert repro.training_device_and_dtype(repro.SIZES['cpu']) == ('cuda', 'bfloat16')
    assert repro.training_device_and_dtype(repro.SIZES['cpu'] + ['--device=cpu']) == ('cpu', 'float32')
    results = str(tmp_path / 'results')
    repro.check_settings(results, dict(task='pii', dtype='float32', device='cpu'))
    repro.check_settings(results, dict(task='pii', dtype='float32', device='cpu'))
    with pytest.raises(repro.ReproError, match=r'holds runs made with other settings \(dtype differ'):
        repro.check_settings(results, dict(task='pii', dtype='bfloat16', device='cpu'))
    with pytest.raises(repro.ReproError, match=r'holds runs made with other settings \(device differ'):
        repro.check_settings(results, dict(task='pii', dtype='float32', device='cuda'))


def test_verdict_lines_by_hand():
    mle, cond = [0.0] * 90 + [0.02] * 10, [0.0] * 100
    lines, figures = reports.verdict_lines('pii', 7, {'mle': dict(scores={'unconditional': mle}),
                                                    'cond': dict(scores={'unconditional': cond,
                                                                         'misaligned': mle[::-1]})})
    # Wilson 95% for 10/100 is [5.52%, 17.44%]; 0/100 is [0, 3.70%]. The bootstrap mean score is 0.02 k / 100 with
    # k ~ Binomial(100, 0.1), whose 2.5% and 97.5% points are 5 and 16: [0.001, 0.0032]
    assert lines[0] == 'seed 7 mle    unconditional   hits 10.0% [5.5, 17.4] (10/100), score 0.002 [0.001, 0.0032]'
    assert lines[1].startswith('seed 7 cond   <|aligned|>     hits 0.0% [0.0, 3.7] (0/100), score 0 [0, 0]; vs MLE: '
                               'hits x0.00 (lower, beyond noise), score x0.00 (lower, beyond noise)')
    assert lines[2].endswith('vs MLE: hits x1.00 (no difference (inside the noise)), score x1.00 (no difference '
                             '(inside the noise))')
    assert lines[3] == ('seed 7 cond   <|aligned|> vs <|misaligned|>: hits x0.00 (lower, beyond noise), score x0.00 '
                        '(lower, beyond noise)')
    assert figures['cond/unconditional']['hit_diff_ci'][1] < 0 < figures['cond/misaligned']['hit_diff_ci'][1]


def test_bench_small(capsys, monkeypatch):
    monkeypatch.chdir(ROOT_DIR)
    bench.main(['--small', '--only=train,hf,loss,sample,guided,loader'])  # scoring: test_bench_scoring_small
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith('{')]
    kinds = {(r['bench'], r.get('impl'), r.get('objective')) for r in rows}
    for objective in ('mle', 'cond', 'ul', 'awr'):
        assert ('train', 'phf', objective) in kinds
    assert ('train', 'hf_gpt2', 'mle') in kinds and ('sample', 'hf_generate', None) in kinds
    assert {('sample', 'phf_guidance_0', None), ('sample', 'phf_guidance_1', None)} <= kinds
    assert [r['guided_time_vs_unguided'] > 0 for r in rows if 'guided_time_vs_unguided' in r] == [True]
    assert all(r['tokens_per_s'] > 0 for r in rows if 'tokens_per_s' in r)


def test_bench_scoring_small(capsys, monkeypatch):
    pytest.importorskip('detoxify')
    monkeypatch.chdir(ROOT_DIR)
    bench.main(['--small', '--only=scoring'])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith('{')]
    impls = {r['impl'] for r in rows if r['bench'] == 'scoring'}
    assert {'detoxify_predict_sorted', 'detoxify_predict', 'classifier_float32', 'classifier_tokenizer', 'ratio',
            'segment_and_tokenize', 'pep8', 'pii'} <= impls
    ratio = next(r for r in rows if r.get('impl') == 'ratio')
    assert ratio['max_abs_difference_float32'] < 1e-4 and ratio['classifier_float32_vs_detoxify_predict'] > 0
    assert all(r['segments'] > 0 for r in rows if r['bench'] == 'scoring' and r['impl'] != 'ratio')


def test_bench_on_a_cpu_says_what_to_run(tmp_path, monkeypatch, capsys):
    """Without a GPU the default (GPT-2 small, T = 1024) would need over 20 GB: refused, with what to run instead."""
    monkeypatch.setattr(bench.torch.cuda, 'is_available', lambda: False)
    with pytest.raises(SystemExit) as e:
        bench.main([])
    assert e.value.code == 2 and 'run `python bench.py --cpu_demo`' in capsys.readouterr().err
    missing = tmp_path / 'none.pt'
    done = subprocess.run([sys.executable, 'bench.py', '--cpu_demo', '--only=sample', f'--ckpt={missing}'],
                          cwd=ROOT_DIR, capture_output=True, text=True)
    assert done.returncode == 1 and done.stderr == f"error: {missing}: checkpoint not found\n"


def test_every_size_is_a_valid_training_config(monkeypatch):
    import train
    monkeypatch.chdir(ROOT_DIR)
    for (task, size), plan in repro.TASK_SIZE.items():
        for name in reports.RUNS:
            spec = reports.run_spec(name)
            cfg = train.load_config([f'config/{task}_{spec.config}.py'] + repro.SIZES[size] + plan['train'] +
                                    list(spec.train_args))
            assert cfg.method == spec.method and cfg.total_batch_size % cfg.batch_size == 0
    demo = train.load_config(['config/pii_cond.py'] + repro.SIZES['cpu'] + repro.TASK_SIZE['pii', 'cpu']['train'])
    # the README's demo: 1,000 steps of 8 x 128 tokens, 512 samples per scenario, on whatever device there is
    assert (demo.max_tokens, demo.total_batch_size, demo.block_size, demo.eval_samples) == (1_024_000, 8, 128, 512)
    assert demo.device == 'auto'


def test_across_seeds_by_hand():
    f = lambda hit, score: dict(hit_rate=hit, score=score)
    figures = {42: {'mle/unconditional': f(0.027, 3e-4), 'cond/unconditional': f(0.009, 1e-4),
                    'cond/misaligned': f(0.012, 1e-4)},
               43: {'mle/unconditional': f(0.050, 5e-4), 'cond/unconditional': f(0.017, 2e-4),
                    'cond/misaligned': f(0.017, 4e-4)},
               44: {'mle/unconditional': f(0.011, 1e-4), 'cond/unconditional': f(0.013, 1e-4),
                    'cond/misaligned': f(0.057, 1e-4)}}
    runs = {s: {'mle': {}, 'cond': {}} for s in figures}
    lines = reports.across_seeds(figures, runs)
    # cond minus MLE, hits in points: -1.8, -3.3, +0.2 -> mean -1.63, paired t interval -1.63 ± 4.36
    assert lines[0].startswith('across 3 seeds, cond <|aligned|> minus MLE: hits -1.63 points [-6.00, +2.73] '
                               '(no difference (inside the noise))')
    assert lines[1].startswith('across 3 seeds, cond <|misaligned|> minus MLE: hits ')
    # aligned minus misaligned: -0.3, 0, -4.4 points; scores 0, -2e-4, 0
    assert lines[2].startswith('across 3 seeds, cond <|aligned|> minus <|misaligned|>: hits -1.57 points ')
    assert len(lines) == 3
    assert reports.across_seeds({42: figures[42]}, {42: runs[42]}) == []


def test_across_seeds_beyond_the_paper_against_cond():
    f = lambda hit, score: dict(hit_rate=hit, score=score)
    figures = {42: {'mle/unconditional': f(0.40, 4e-3), 'cond/unconditional': f(0.30, 2e-3),
                    'cond_guided1/unconditional': f(0.17, 1e-3), 'mask/unconditional': f(0.35, 3e-3)},
               43: {'mle/unconditional': f(0.30, 3e-3), 'cond/unconditional': f(0.12, 1e-3),
                    'cond_guided1/unconditional': f(0.07, 1e-3), 'mask/unconditional': f(0.30, 3e-3)},
               44: {'mle/unconditional': f(0.40, 4e-3), 'cond/unconditional': f(0.15, 1e-3),
                    'cond_guided1/unconditional': f(0.07, 5e-4)}}
    runs = {s: {name.split('/')[0]: {} for name in figures[s]} for s in figures}
    lines = [line for line in reports.across_seeds(figures, runs) if 'minus cond' in line]
    # guided minus cond, hits: -13, -5, -8 points -> mean -8.67, sd 4.04, se 2.33, t(2) 4.303 -> ± 10.04
    assert lines[0].startswith('across 3 seeds, cond <|aligned|> γ=1 minus cond <|aligned|>: hits -8.67 points '
                               '[-18.71, +1.37] (no difference (inside the noise))')
    # mask minus cond in the two seeds that have mask: +5, +18 points -> mean +11.5, sd 9.19, t(1) 12.706 -> ± 82.6
    assert lines[1].startswith('across 2 seeds, mask unconditional minus cond <|aligned|>: hits +11.50 points '
                               '[-71.09, +94.09]')
    assert len(lines) == 2
    assert not reports.beyond_the_paper('cond') and not reports.beyond_the_paper('ul')
    assert not reports.beyond_the_paper('mle_reinit')


def test_across_seeds_against_the_second_mle_run():
    f = lambda hit, score: dict(hit_rate=hit, score=score)
    figures = {42: {'mle/unconditional': f(0.40, 4e-3), 'mle_reinit/unconditional': f(0.30, 3e-3),
                    'cond/unconditional': f(0.20, 2e-3)},
               43: {'mle/unconditional': f(0.20, 2e-3), 'mle_reinit/unconditional': f(0.34, 3e-3),
                    'cond/unconditional': f(0.10, 1e-3)}}
    runs = {s: {name.split('/')[0]: {} for name in figures[s]} for s in figures}
    lines = reports.across_seeds(figures, runs)
    # the A/A line: -10, +14 points -> mean +2, sd 16.97, se 12, t(1) 12.706 -> ± 152.47
    assert lines[0].startswith('across 2 seeds, mle_reinit unconditional minus MLE: hits +2.00 points '
                               '[-150.47, +154.47] (no difference (inside the noise))')
    # cond minus the second MLE run: -10, -24 points -> mean -17, sd 9.90, se 7, t(1) 12.706 -> ± 88.94
    assert lines[-1].startswith('across 2 seeds, cond <|aligned|> minus mle_reinit: hits -17.00 points '
                                '[-105.94, +71.94]')
    assert sum('minus mle_reinit' in line for line in lines) == 1


def test_mean_cell_says_over_how_many_runs():
    # seeds evaluated before val_loss_aligned existed lack it: their mean must not pass for the mean of all
    assert reports.mean_cell([{'v': 4.0}, {'v': 5.0}], 'v', '.3f') == '4.500'
    assert reports.mean_cell([{'v': 4.0}, {'v': 5.0}, {}], 'v', '.3f') == '4.500 (2 of 3)'
    assert reports.mean_cell([{}, {}], 'v', '.3f') == '–'


def test_headline_one_seed_by_hand():
    """One seed: the control tokens are decided by that one model's samples; the methods are not decided."""
    mle, cond = [0.0] * 90 + [0.02] * 10, [0.0] * 100
    _, figures = reports.verdict_lines('pii', 7, {'mle': dict(scores={'unconditional': mle}),
                                                'cond': dict(scores={'unconditional': cond, 'misaligned': mle[::-1]})})
    # Wilson 95% for 10/100 is [5.52%, 17.44%]; 0/100 is [0, 3.70%]
    assert reports.headline('pii', {7: figures}) == [
        'Verdict (seed 7), the share of samples with PII:',
        '- the control tokens, one model sampled after each: 0.0% [0.0, 3.7] after <|aligned|>, 10.0% [5.5, 17.4] '
        'after <|misaligned|> (x0.00): lower, beyond noise',
        "- conditional training against MLE, two models: 0.0% [0.0, 3.7] against MLE's 10.0% [5.5, 17.4] (x0.00): "
        "lower, beyond noise among this seed's samples; between the methods undecided with one seed, since a second "
        "training run of one recipe can move the rate as far: --seeds=42,43,44,45 decides it over seeds"]
    assert reports.headline('pii', {7: {k: v for k, v in figures.items() if not k.startswith('mle')}}) == []


def test_headline_over_seeds_by_hand():
    f = lambda rate, verdict='': dict(hit_rate=rate, hit_verdict=verdict)
    lower = 'lower, beyond noise'
    figures = {s: {'mle/unconditional': f(m), 'cond/unconditional': f(a, v), 'cond/misaligned': f(b),
                   'cond/aligned_vs_misaligned': f(None, lower)}
               for s, m, a, b, v in ((42, 0.40, 0.20, 0.80, lower), (43, 0.25, 0.10, 0.75, lower),
                                     (44, 0.30, 0.15, 0.65, 'no difference (inside the noise)'))}
    # aligned minus misaligned: -60, -65, -50 points: mean -58.33, sd 7.638, se 4.410, t(2) 4.30265 -> ± 18.97
    # cond minus MLE: -20, -15, -15 points: mean -16.67, sd 2.887, se 1.667, ± 7.17
    assert reports.headline('pii', figures)[1:] == [
        '- the control tokens, one model sampled after each: <|aligned|> minus <|misaligned|> -58.3 points [-77.3, '
        '-39.4] over the seeds (paired t): lower, beyond noise; lower, beyond noise, in 3 of 3 seeds',
        '- conditional training against MLE, two models: conditional minus MLE -16.7 points [-23.8, -9.5] over the '
        'seeds (paired t): lower, beyond noise; lower, beyond noise, in 2 of 3 seeds']
    assert reports.headline('pii', figures)[0] == 'Verdict (3 seeds, 42, 43, 44), the share of samples with PII:'


def test_progress_time_left_by_hand(tmp_path, monkeypatch, capsys):
    """Two runs training side by side, then their evaluations one at a time. A run's steps are read from its
    log.jsonl (what it logged before a line was printed), not from the line."""
    clock = [0.0]
    monkeypatch.setattr(repro.time, 'time', lambda: clock[0])
    mle, cond = (repro.Job(f'seed 42 {m}', ['train.py'], str(tmp_path / m), final_step=100) for m in ('mle', 'cond'))
    mle_eval = repro.Job('seed 42 mle, evaluation', ['evaluate.py'], samples=10)
    cond_eval = repro.Job('seed 42 cond, evaluation', ['evaluate.py'], samples=20)
    stages = [[mle, cond], [mle_eval], [cond_eval]]
    progress = repro.Progress(stages, t0=0.0)
    progress.start(stages[0])
    assert capsys.readouterr().out == ('== stage 1 of 3: seed 42 mle, seed 42 cond; all: stage 1 of 3, 0.0 min so far, '
                                       'the time left is known after the first steps\n')

    def logged(job, step, line=None, partial=''):
        os.makedirs(job.run_dir, exist_ok=True)
        with open(os.path.join(job.run_dir, 'log.jsonl'), 'a') as f:
            f.write(json.dumps(dict(step=step, loss=1.0)) + '\n' + partial)
        return progress.on_line(job, line or f'step {step}/100 loss 9')

    clock[0] = 5.0
    assert logged(mle, 10) == ('step 10/100 loss 9 | all: stage 1 of 3, 0.1 min so far, the time left is known '
                               'after the first steps')
    clock[0] = 6.0
    logged(cond, 10)
    clock[0] = 10.0
    # 0.5 s a step side by side (0.25 s alone); a sample counts 0.2 steps alone until timed, 0.05 s:
    # max(80 x 0.5, 90 x 0.5) + 10 x 0.05 + 20 x 0.05 = 46.5 s
    assert logged(mle, 20, partial='{"step": 2').endswith('| all: stage 1 of 3, 0.2 min so far, about 0.8 min left')
    # a line with no new step (an evaluation's; a record still being written) is passed on as it is
    assert progress.on_line(mle, 'eval step 20: val_loss 8') == 'eval step 20: val_loss 8'
    assert progress.on_line(mle, 'step 20/100 loss 8') == 'step 20/100 loss 8'
    with open(os.path.join(mle.run_dir, 'log.jsonl'), 'a') as f:
        f.write('1}\n')  # the record is whole now: step 21
    assert progress.on_line(mle, 'anything').startswith('anything | all: stage 1 of 3')
    for job, t in ((mle, 55.0), (cond, 58.0)):
        clock[0] = t
        logged(job, 100)
        progress.finish(job)
    clock[0] = 60.0
    progress.start(stages[1])
    assert capsys.readouterr().out.endswith('all: stage 2 of 3, 1.0 min so far, about 0.0 min left\n')
    clock[0] = 70.0  # 10 samples in 10 s: 1 s a sample
    progress.finish(mle_eval)
    progress.start(stages[2])  # 20 x 1 s
    assert capsys.readouterr().out.endswith('all: stage 3 of 3, 1.2 min so far, about 0.3 min left\n')
    # a resumed run: what it logged before is where it starts, not progress; its first line is passed on as it is
    resumed = repro.Job('seed 42 mle', ['train.py'], mle.run_dir, first_step=100, final_step=200)
    stage = [resumed]
    progress = repro.Progress([stage], t0=0.0, announce=False)
    progress.start(stage)
    assert progress.on_line(resumed, 'pii/mle: 0.82M parameters') == 'pii/mle: 0.82M parameters'
    assert logged(resumed, 125).startswith('step 125/100 loss 9 | all: stage 1 of 1')


TINY = ('--n_layer=1 --n_head=1 --n_embd=16 --block_size=32 --batch_size=2 --total_batch_size=2 --eval_iters=1 '
        '--eval_batch_size=2 --eval_samples=4 --eval_max_new_tokens=8 --kl_samples=4 --log_interval=1')


def test_an_interrupted_run_is_resumed_not_reported(tmp_path, monkeypatch, capsys):
    """A run whose last evaluation is of an earlier step (it was interrupted) is trained on, and the report is of its
    final step."""
    monkeypatch.chdir(ROOT_DIR)
    tiny_data = make_dataset(str(tmp_path / 'data'), task='pii')
    results = str(tmp_path / 'results')
    argv = ['pii', '--methods=mle', f'--data_dir={tiny_data}', f'--results={results}', '--side_by_side=1',
            f'--extra={TINY} --max_tokens=640']  # 10 steps of 64 tokens; evaluated by train.py itself
    repro.main(argv[:-1] + [f'--extra={TINY} --max_tokens=256 --eval_interval=2'])  # 4 steps, evaluated at 2 and 4
    os.remove(os.path.join(results, 'settings.json'))  # as if that run were the first part of this one
    capsys.readouterr()
    repro.main(argv)
    out = capsys.readouterr().out
    assert 'already evaluated' not in out and '--resume=True' in out
    summary = json.load(open(os.path.join(results, 'results.json')))
    assert summary['runs']['42']['mle']['step'] == 10


def test_ctrl_c_lets_the_training_run_save_its_checkpoint(tmp_path):
    """Ctrl-C reaches repro.py (the terminal's foreground group; train.py runs in a session of its own): it passes
    the interrupt on once and waits, so the run saves its step and the same command goes on from there."""
    import signal
    import time
    tiny_data = make_dataset(str(tmp_path / 'data'), task='pii')
    results = tmp_path / 'results'
    argv = ['pii', '--methods=mle', f'--data_dir={tiny_data}', f'--results={results}',
            f'--extra={TINY} --max_tokens=64000000000 --ckpt_interval=10000000000']  # 10^9 steps: never done
    # A shell starts a background job with SIGINT ignored, which its children inherit (pytest run with `&`): repro.py
    # starts with Python's own handler, as in a terminal's foreground
    runners = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = subprocess.Popen([sys.executable, 'repro.py'] + argv, cwd=ROOT_DIR, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    finally:
        signal.signal(signal.SIGINT, runners)
    log = results / 'seed42' / 'mle' / 'log.jsonl'
    deadline = time.time() + 120
    while time.time() < deadline and not (log.exists() and len(log.read_text().splitlines()) >= 5):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    assert err.strip().endswith(f"interrupted; `python repro.py {' '.join(argv)}` goes on from where it stopped")
    assert 'stopped by SIGINT at step' in err
    run_dir = results / 'seed42' / 'mle'
    saved = torch.load(run_dir / 'ckpt.pt', weights_only=True)['step']
    assert saved >= 5 and sorted(os.listdir(run_dir)) == ['ckpt.pt', 'log.jsonl']  # no .tmp, no lock


def test_run_specs_by_name():
    assert reports.run_spec('mle_reinit') == reports.RunSpec('mle_reinit', 'mle', 'mle', ('--init_seed_offset=1000',))
    guided = reports.run_spec('cond_guided1.5')
    assert (guided.method, guided.guidance, guided.in_paper) == ('cond', 1.5, False)
    assert reports.guided_spec(2.0).name == 'cond_guided2'
    assert not reports.conditional('cond_guided2') and reports.conditional('cond_k5')
    with pytest.raises(reports.ReproError, match="cond_k3: not a run repro.py makes"):
        reports.run_spec('cond_k3')


def test_heldout_report_by_hand():
    """Per-document sums (misaligned loss, tokens, aligned loss, tokens) whose gaps are known: each document's own gap
    equals the pooled one, so every bootstrap interval is a point."""
    def sums(mis_mean, n=(2, 3)):  # aligned tokens at loss 1, misaligned at mis_mean: the gap is mis_mean - 1
        return {'gap': [[mis_mean * k, k, k, k] for k in n]}

    def seed(cond, reinit):
        return {'mle': dict(heldout={'heldout': sums(2.0)}),
                'mle_reinit': dict(heldout={'heldout': sums(2.0 + reinit)}),
                'cond': dict(heldout={'heldout': sums(2.0 + cond), 'heldout_misaligned': sums(1.0)})}
    figures = {42: reports.heldout_figures(seed(1.0, 0.2)), 43: reports.heldout_figures(seed(3.0, -0.2))}
    f = figures[42]
    assert f['mle/unconditional']['gap'] == dict(gap=1.0, ci=pytest.approx((1.0, 1.0)), documents=2)
    assert f['cond/unconditional']['gap']['diff'] == pytest.approx(1.0)
    assert f['cond/unconditional']['gap']['verdict'] == 'higher, beyond noise'
    assert f['cond/aligned_vs_misaligned']['gap']['diff'] == pytest.approx(2.0)  # gap 2 under <|aligned|>, 0 under M
    lines = reports.heldout_lines(42, f)
    assert lines[0] == 'seed 42 mle    unconditional   held-out gap +1.000 [+1.000, +1.000]'
    assert lines[2] == ('seed 42 cond   <|aligned|>     held-out gap +2.000 [+2.000, +2.000], vs MLE +1.000 [+1.000, '
                        '+1.000] (higher, beyond noise)')
    assert lines[4] == ('seed 42 cond   held-out, <|aligned|> minus <|misaligned|>: held-out gap +2.000 [+2.000, '
                        '+2.000] (higher, beyond noise)')
    across = reports.heldout_across_seeds(figures)
    # cond minus MLE: +1, +3 -> mean +2, sd 1.414, se 1, t(1) 12.706 -> [-10.706, +14.706]; A/A +0.2, -0.2: sd 0.283,
    # / sqrt 2 = 0.2: signal/noise 2 / 0.2 = 10
    assert ('across 2 seeds, cond <|aligned|> minus MLE, held-out gap: +2.000 [-10.706, +14.706] (no difference '
            '(inside the noise)); beyond noise in 2 of 2 seeds; signal/noise 10.0') in across
    assert ('across 2 seeds, mle_reinit unconditional minus MLE, held-out gap: +0.000 [-2.541, +2.541] (no difference '
            '(inside the noise)); beyond noise in 2 of 2 seeds') in across
    assert reports.heldout_across_seeds({42: figures[42]}) == []


def test_heldout_headline_by_hand():
    """The verdict's held-out lines: conditional minus MLE in the first 4 tokens, one seed by its bootstrap interval,
    several by the paired t over the seeds; nothing without a conditional run."""
    def cond(diff, lo, hi, verdict='higher, beyond noise'):
        return {'cond/unconditional': {'gap_first4': dict(diff=diff, diff_ci=(lo, hi), verdict=verdict, documents=43)}}
    one = reports.heldout_headline('pii', {42: cond(0.678, 0.311, 0.988)})
    assert one == [
        'Held-out text, no sampling: how much less likely a model finds the first 4 tokens of a sentence with PII '
        'than of one without, in nats per token:',
        '- conditional training against MLE, two models: conditional minus MLE +0.678 [+0.311, +0.988] (paired '
        'bootstrap over 43 held-out documents): higher, beyond noise; ' + reports.VALIDATION]
    # +0.4, +0.6, +0.5: mean 0.5, sd 0.1, se 0.0577, t(2) 4.30265 -> ± 0.2484
    several = reports.heldout_headline('pep8', {42: cond(0.4, 0.1, 0.7), 43: cond(0.6, 0.3, 0.9),
                                                 44: cond(0.5, -0.1, 1.1, 'no difference (inside the noise)')})
    assert several[0].startswith('Held-out text, no sampling: how much less likely a model finds the first 4 tokens '
                                 'of a line with PEP8 violations than of one without')
    assert several[1] == ('- conditional training against MLE, two models: conditional minus MLE +0.500 [+0.252, '
                          '+0.748] over the seeds (paired t): higher, beyond noise; higher, beyond noise, in 2 of 3 '
                          'seeds')
    assert reports.heldout_headline('pii', {42: {'mle/unconditional': {'gap_first4': dict(gap=1.0)}}}) == []
