"""bench.py --gpu_check: its CPU mode end to end (the same parts as on a GPU, at tiny sizes), and the scheduling that
keeps a failing or hanging part from taking the others down."""
import json
import os
import subprocess
import sys
import tarfile

import gpu_check
from conftest import ROOT_DIR


def test_the_cpu_mode_runs_every_part(tmp_path):
    out = tmp_path / 'check'
    done = subprocess.run([sys.executable, 'bench.py', '--gpu_check', f'--out={out}', '--device=cpu'], cwd=ROOT_DIR,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    first = done.stdout.splitlines()[:2]
    assert first[0].startswith('gpu_check needs: torch ') and 'pycodestyle 2.15.0' in first[0]
    assert 'the wheels of pycodestyle==2.15.0 detoxify==0.5.4' in first[1] and 'PHF_GPT2_BPE' in first[1]
    report = json.load(open(out / 'gpu_check.json'))
    parts = report['parts']
    assert list(parts) == ['prepare', 'compile:mle', 'train', 'sample', 'scoring', 'repro'] + [
        f'objective:{m}' for m in ('mle', 'filter', 'cond', 'ul', 'awr', 'rwr', 'mask')] + ['resume', 'evaluate']
    assert {name: p['status'] for name, p in parts.items()} == {name: 'ok' for name in parts}
    trained = {(r['impl'], r['objective']) for r in parts['train']['figures']['rows'] if r['bench'] == 'train'}
    assert trained == {('phf', m) for m in gpu_check.OBJECTIVES} | {('hf_gpt2', 'mle')}
    sampled = {r['impl'] for r in parts['sample']['figures']['rows'] if r['bench'] == 'sample'}
    assert sampled == {'phf', 'decode_step_vs_output_matmul', 'hf_generate', 'ratio'}
    scored = {r['impl'] for r in parts['scoring']['figures']['rows'] if r['bench'] == 'scoring'}
    assert {'detoxify_predict', 'classifier_float32', 'classifier_tokenizer', 'ratio'} <= scored
    for method in gpu_check.OBJECTIVES:
        f = parts[f'objective:{method}']['figures']
        assert f['last_loss'] < f['first_loss'] and f['first_steps'] == '2-8' and f['last_steps'] == '18-24'
    assert parts['resume']['figures'] == dict(bit_exact=True, max_abs_diff=0.0, step=24)
    assert parts['evaluate']['figures']['export_max_abs_logit_diff'] < 1e-4
    assert parts['evaluate']['figures']['evaluation']['step'] == 24
    assert set(parts['repro']['figures']['results']['runs']['42']) == {'mle', 'cond'}
    md = open(out / 'gpu_check.md').read()
    for heading in ('## Training throughput', '## Sampling', '## Scoring', '## Each objective', '## repro.py'):
        assert heading in md
    assert '| phf | awr |' in md and 'resume: bit_exact True' in md and '| prepare | ok |' in md
    assert "against its output layer's matmul alone" in md
    with tarfile.open(out / 'gpu_check_logs.tar.gz') as tar:
        names = set(tar.getnames())
    assert {'logs/train.log', 'logs/objective_mask.log', 'repro/results.md'} <= names
    assert not [n for n in names if n.endswith('.pt')]
    again = subprocess.run([sys.executable, 'bench.py', '--gpu_check', f'--out={out}', '--device=cpu'], cwd=ROOT_DIR,
                           capture_output=True, text=True)
    assert again.returncode == 1 and again.stderr == f"error: {out} is not empty: give --out a new folder\n"


def sizes(**kw):
    return gpu_check.Sizes(**dict(dict(budget_s=600, limit_s=60, prepare=[], model=[], tokens_per_step=0, steps=0,
                                       bench=[], sample=[], compiled=(), evaluate=[], repro=[], at_once={},
                                       env={}, exclusive=True), **kw))


def python(code):
    return ['-c', code]


def test_a_failing_or_hanging_part_is_recorded_and_the_rest_run(tmp_path):
    os.makedirs(tmp_path / 'logs')
    parts = [gpu_check.Part('fails', [python("print('oh no'); raise SystemExit(3)")]),
             gpu_check.Part('hangs', [python("import time; print('waiting', flush=True); time.sleep(600)")],
                            limit_s=2),
             gpu_check.Part('needs_fails', [python("print('never')")], after=('fails',)),
             gpu_check.Part('two_steps', [python("print('one')"), python("print('{\"two\": 2}')")],
                            read=gpu_check.read_last_json),
             gpu_check.Part('unreadable', [python("print('no json')")], read=gpu_check.read_bench)]
    reports = []
    gpu_check.run_parts(parts, sizes(), str(tmp_path), lambda: reports.append([p.status for p in parts]))
    status = {p.name: p.status for p in parts}
    assert status == dict(fails='failed', hangs='timeout', needs_fails='skipped', two_steps='ok',
                          unreadable='failed')
    tails = {p.name: p.tail for p in parts}
    assert 'oh no' in tails['fails'] and 'waiting' in tails['hangs'] and tails['needs_fails'] == (
        'needs fails, which failed')
    assert parts[3].figures == {'two': 2} and tails['unreadable'].startswith('bench.py printed no measurement')
    assert len(reports) == 4  # after each part that ran, not the skipped one


def test_a_part_that_needs_the_gpu_alone_waits_for_it_and_keeps_it(tmp_path):
    check = sizes(at_once=dict(pool=2))
    parts = [gpu_check.Part('cpu', [], gpu=False), gpu_check.Part('warm1', [], pool='pool'),
             gpu_check.Part('warm2', [], pool='pool'), gpu_check.Part('warm3', [], pool='pool'),
             gpu_check.Part('timed', [], alone=True, after=('warm1', 'warm2', 'warm3')),
             gpu_check.Part('later', [])]
    running = []

    def start(name):
        part = next(p for p in parts if p.name == name)
        part.status = 'running'
        running.append(type('Child', (), dict(part=part))())

    def end(name):
        next(c for c in running if c.part.name == name).part.status = 'ok'
        running[:] = [c for c in running if c.part.name != name]

    ready = lambda: [p.name for p in parts if p.status == 'pending' and gpu_check.may_start(p, parts, running, check)]
    assert ready() == ['cpu', 'warm1', 'warm2', 'warm3']
    start('cpu'), start('warm1'), start('warm2')
    assert ready() == []  # the pool is full; 'later' waits for the timed part before it
    end('warm1'), start('warm3'), end('warm2'), end('warm3')
    assert ready() == ['timed']  # the CPU part may go on running
    start('timed')
    assert ready() == []
    end('timed')
    assert ready() == ['later']
    unordered = sizes(exclusive=False, at_once=dict(pool=2))  # a CPU: nothing waits for the GPU
    assert [p.name for p in parts if gpu_check.may_start(p, parts, [], unordered)] == [p.name for p in parts]


def test_fewer_parts_share_a_smaller_gpu():
    assert gpu_check.fewer_at_once(gpu_check.GPU, 140.4).at_once == dict(compile=4, objective=7)  # an H200
    assert gpu_check.fewer_at_once(gpu_check.GPU, 79.6).at_once == dict(compile=2, objective=4)  # an H100
    assert gpu_check.fewer_at_once(gpu_check.GPU, None).at_once == dict(compile=4, objective=7)  # not known


def test_the_scoring_report_reads_the_batch_budgets():
    import gpu_report
    rows = [dict(bench='scoring', impl='classifier_bfloat16', rank=0, device='cuda:0', segments=20000, tokens=460000,
                 seconds=0.5, segments_per_s=40000.0, tokens_per_s=920000)] + [
        dict(bench='scoring', impl='classifier_bfloat16_budget', rank=0, tokens_per_batch=b, default=b == 131072,
             tokens_per_s=s) for b, s in ((32768, 700000), (131072, 920000), (524288, 1010000))]
    lines = gpu_report.scoring_table(rows)
    assert '| classifier_bfloat16 | cuda:0 | 20,000 | 460,000 | 0.5 | 920,000 |' in lines
    assert lines[-1] == ('\nclassifier_bfloat16 by its batch budget (padded tokens, * the default): 32,768 700,000 '
                         'tokens/s, 131,072* 920,000 tokens/s, 524,288 1,010,000 tokens/s')
