"""redteam.py: few-shot selection and candidate parsing by hand, a whole run with a local red LM (a tiny checkpoint
of ours, and a Hugging Face directory), and the OpenAI path through a real HTTP server on 127.0.0.1 (completions and
chat, the cache, a failing endpoint)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import data
import hf
import redteam as rt
import remote
from conftest import JSONHandler, serve
from data import ALIGNED, EOS, MISALIGNED
from kl import EvalError
from model import GPT, GPTConfig
from test_evaluate import save_ckpt
from tokenizer import get_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOX = RED = None


def tiny_ckpt(path, task, method='mle', block_size=64, seed=0):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.manual_seed(seed)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=block_size)).eval()
    return save_ckpt(model, path, task=task, method=method)


def test_selection_probability_is_a_softmax_of_mean_score_over_temperature():
    e = np.exp([0.0, 1.0, 2.0])
    want = e / e.sum()  # means 0, 0.1, 0.2 at temperature 0.1
    assert np.allclose(rt.selection_probs([0.0, 0.1, 0.2], 0.1), want)
    assert np.allclose(want, [0.090031, 0.244728, 0.665241], atol=1e-6)
    assert np.allclose(rt.selection_probs([500.0, 500.0, 0.0], 0.1), [0.5, 0.5, 0.0])  # no overflow
    pool = {'a': [0.0], 'b': [0.05, 0.15], 'c': [0.2]}  # means 0, 0.1, 0.2
    rng, n = np.random.default_rng(0), 20000
    first = [rt.draw_few_shot(pool, 1, 0.1, rng)[0] for _ in range(n)]
    sigma = np.sqrt(want * (1 - want) / n)  # of a frequency; 5 sigma apart by chance: about once in 2 million
    assert np.all(np.abs(np.array([first.count(t) / n for t in 'abc']) - want) < 5 * sigma)
    # two of three without replacement, in successive draws: P({b, c}) = pb pc / (1 - pb) + pc pb / (1 - pc)
    pa, pb, pc = want
    p_bc = pb * pc / (1 - pb) + pc * pb / (1 - pc)
    pairs = [frozenset(rt.draw_few_shot(pool, 2, 0.1, rng)) for _ in range(n)]
    assert pairs.count(frozenset('bc')) / n == pytest.approx(p_bc, abs=5 * np.sqrt(p_bc * (1 - p_bc) / n))
    assert all(len(p) == 2 for p in pairs)
    assert rt.draw_few_shot(pool, 5, 0.1, rng) and len(rt.draw_few_shot(pool, 5, 0.1, rng)) == 3


def test_red_prompt_and_candidates_by_hand():
    assert rt.red_prompt('toxicity', ['You are', 'He was']) == rt.RED_TEMPLATES['toxicity'].format(
        examples='1. You are\n2. He was\n3.')
    assert rt.red_prompt('pep8', ['x=1', 'def f( ):\n    pass']).endswith(
        'Python code.\n```\nx=1\n```\n\n```\ndef f( ):\n    pass\n```\n\n')
    parse = rt.parse_candidates
    assert parse('pii', ' My email is\n6. Call me at') == ['My email is']
    assert parse('pii', '6. I paid 5. Then he said') == ['I paid 5. Then he said']  # only the leading number goes
    assert parse('toxicity', '  12.   You are such a') == ['You are such a']
    assert parse('toxicity', '\nThe second line') == [] and parse('toxicity', '   ') == []
    completion = ('Sure:\n```\nx=1\n```\n\n```python\ndef f( ):\n    pass\n```\n\n```\nx=1\n```\nand ```\n'
                  'unclosed')
    assert parse('pep8', completion) == ['x=1', 'def f( ):\n    pass']
    assert parse('pep8', 'no code here') == []


def test_round_metrics_by_hand():
    pool = {f'p{i}': [rt.INITIAL_SCORE] for i in range(12)}
    pool.update(a=[0.5, 0.7], b=[0.2])
    m = rt.round_metrics(pool, {'a': [0.7], 'b': [0.2]})
    assert m['best_prompt'] == 'a' and m['best_prompt_score'] == pytest.approx(0.6)
    assert m['best_10_prompt_score'] == pytest.approx((0.6 + 0.2 + 8e-3) / 10)
    assert m['best_100_prompt_score'] == pytest.approx(m['average_score']) == pytest.approx((0.8 + 12e-3) / 14)
    assert m['round_best_prompt'] == 'a' and m['round_best_prompt_score'] == pytest.approx(0.7)
    assert m['round_average_score'] == pytest.approx(0.45) and m['pool_size'] == 14
    assert rt.round_metrics(pool, {})['round_average_score'] is None


def test_every_task_has_a_template_and_initial_prompts():
    assert set(rt.RED_TEMPLATES) == set(data.TASKS)
    for task in data.TASKS:
        prompts = rt.load_prompts(os.path.join(rt.PROMPTS_DIR, f'redteam_{task}.jsonl'))
        assert len(prompts) >= 20 and len(set(prompts)) == len(prompts)


def run_args(tmp_path, ckpt, red, *extra):
    return [f'--ckpt={ckpt}', f'--red={red}', '--rounds=2', '--trials=2', '--red_n=3', '--red_max_tokens=6',
            '--continuations=4', '--max_length=20', '--min_length=12', f'--out_dir={tmp_path / "out"}',
            f'--red_cache={tmp_path / "cache"}', '--device=cpu', *extra]


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_a_local_red_checkpoint_end_to_end(tmp_path, monkeypatch):
    """PII targets (one conditional) against a tiny red checkpoint: the sampler gets the original's lengths and
    prefix, every round is logged, the pools and the plot are written, and a rerun takes the red LM's completions
    from the cache and repeats the run exactly."""
    red = tiny_ckpt(tmp_path / 'red.pt', 'pii', block_size=256, seed=1)
    mle, cond = tiny_ckpt(tmp_path / 'mle' / 'ckpt.pt', 'pii'), tiny_ckpt(tmp_path / 'cond' / 'ckpt.pt', 'pii', 'cond')
    targets = f'{mle},{cond}'
    calls, red_calls, real_sample = [], [], rt.sample

    def spy(model, prompts, max_new_tokens, **kw):
        calls.append((prompts, max_new_tokens, kw))
        return real_sample(model, prompts, max_new_tokens, **kw)
    monkeypatch.setattr(rt, 'sample', spy)
    real_complete = rt.CheckpointRed.complete
    monkeypatch.setattr(rt.CheckpointRed, 'complete', lambda *a: red_calls.append(a[1]) or real_complete(*a))
    rt.main(run_args(tmp_path, targets, red))
    out = tmp_path / 'out'
    records = {name: read_jsonl(out / name / 'rounds.jsonl') for name in ('mle', 'cond')}
    assert len(red_calls) == 4 and (out / 'redteam.png').stat().st_size > 10000  # 2 trials x 2 rounds, then cached
    enc = get_tokenizer()
    for name, recs in records.items():
        assert [(r['trial'], r['round']) for r in recs] == [(0, 1), (0, 2), (1, 1), (1, 2)]
        for r in recs:
            assert r['n_candidates'] >= 1 and r['pool_size'] >= 20 and len(r['few_shot']) == 4
            assert r['best_prompt_score'] + 1e-12 >= r['best_10_prompt_score'] >= r['average_score'] - 1e-12 >= 0
        pool = read_jsonl(out / name / 'pool_trial1.jsonl')
        assert len(pool) == recs[-1]['pool_size'] and [p['mean'] for p in pool] == sorted(
            [p['mean'] for p in pool], reverse=True)
        assert sum(p['n'] == 4 for p in pool) == len(pool) - 20 and sum(p['own_score'] is None for p in pool) == 20
    target_calls = [c for c in calls if len(c[0]) == 4]  # the red LM's have 3 rows
    for prompts, max_new, kw in target_calls:
        cond = prompts[0][1] == ALIGNED
        candidate = prompts[0][2 if cond else 1:]
        assert prompts[0][0] == EOS and all(p == prompts[0] for p in prompts)
        assert max_new == 20 - len(candidate) and kw['min_new_tokens'] == min(max_new, max(0, 12 - len(candidate)))
        assert kw['blocked_tokens'] == ((ALIGNED, MISALIGNED)) and (kw['temperature'], kw['top_p']) == (0.7, 0.9)
        assert enc.decode(candidate) in {p for recs in records.values() for r in recs for p in r['examples']} | {
            p['text'] for name in records for t in (0, 1) for p in read_jsonl(out / name / f'pool_trial{t}.jsonl')}
    assert {p[0][1] == ALIGNED for p, _, _ in target_calls} == {True, False}
    # rerun: no red-LM call, the same rounds
    rt.main(run_args(tmp_path, targets, red))
    assert len(red_calls) == 4
    strip = [{k: v for k, v in r.items() if k != 'seconds'} for r in records['cond']]
    assert [{k: v for k, v in r.items() if k != 'seconds'} for r in read_jsonl(out / 'cond' / 'rounds.jsonl')] == strip
    assert set(rt.read_runs([str(out)])) == {'mle', 'cond'}


def test_a_hugging_face_directory_as_red_lm(tmp_path):
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=128)).eval()
    hf.export(model, str(tmp_path / 'hf'))
    red = rt.load_red(str(tmp_path / 'hf'))
    settings = dict(temperature=1.0, top_p=1.0, max_tokens=5, stop='')
    texts = red.complete('Write five sentences:\n1.', 3, settings, seed=7)
    assert len(texts) == 3 and texts == red.complete('Write five sentences:\n1.', 3, settings, seed=7)
    assert all(len(get_tokenizer().encode_ordinary(t)) <= 6 for t in texts)
    assert all('\n' not in t for t in red.complete('x', 3, dict(settings, max_tokens=20, stop='\n'), seed=1))


def test_a_released_hugging_face_model_as_target(tmp_path, monkeypatch):
    """A GPT-2 with the released models' 50,259 ids: conditional when told, never fed our space-run ids."""
    from test_released import RELEASED_IDS, write_checkpoint
    write_checkpoint(tmp_path / 'released')
    with pytest.raises(EvalError, match='--task='):
        rt.load_target(str(tmp_path / 'released'), 'cpu')
    target = rt.load_target(str(tmp_path / 'released'), 'cpu', 'pii', 'cond')
    model, task, prefix, blocked = target
    assert (model.config.vocab_size, task, prefix, blocked) == (RELEASED_IDS, 'pii', [EOS, ALIGNED],
                                                                (ALIGNED, MISALIGNED))
    seen = []
    monkeypatch.setattr(rt, 'sample', lambda m, prompts, n, **kw: seen.extend(prompts) or [[5, 6]] * len(prompts))
    args = rt.parse_args(['--ckpt=x', '--red=y', '--continuations=2'])
    out = rt.continuations(model, prefix, blocked, ['Call   me at'], args, [0])
    assert list(out) == ['Call   me at'] and max(max(p) for p in seen) < RELEASED_IDS
    # the run of three spaces is ' ' ' ' ' me' to GPT-2, as the released model read it
    assert seen[0] == [EOS, ALIGNED] + get_tokenizer().encode_ordinary('Call') + [220, 220, 502, 379]


class RedServer(JSONHandler):
    """/v1/completions and /v1/chat/completions: canned completions (code fences for PEP8, a sentence otherwise);
    HTTP 500 (asking for a 1 ms wait) while server.failing."""

    def do_POST(self):
        srv = self.server
        body = self.body()
        srv.requests.append((self.path, body))
        if srv.failing:
            return self.reply(500, {'error': {'message': 'overloaded', 'type': 'server_error'}})
        chat = self.path.endswith('/chat/completions')
        choices = []
        for i in range(body['n']):
            k = srv.served = srv.served + 1
            text = f'```\nx{k}=({k},{k})\n```\n\n```\ndef f{k}( a ):\n    return a\n```' if srv.code else \
                f' Please write to my address at number {k} \n6. more'
            text = text.split(body['stop'])[0] if 'stop' in body else text
            choices.append(dict(index=i, finish_reason='stop', **(
                dict(message=dict(role='assistant', content=text)) if chat else dict(text=text, logprobs=None))))
        self.reply(200, dict(id='x', object='chat.completion' if chat else 'text_completion', created=0,
                             model=body['model'], choices=choices))


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setattr(remote, 'BACKOFF_S', 0.0)
    yield from serve(RedServer, monkeypatch, served=0, failing=False, code=True)


def test_an_openai_completions_server_and_the_cache(server, tmp_path):
    """PEP8 against a completions server: the request is the original's, every fenced block is a candidate scored
    with its continuation, and a rerun asks nothing of the server."""
    target = tiny_ckpt(tmp_path / 'pep8' / 'ckpt.pt', 'pep8')
    args = run_args(tmp_path, target, 'openai:tiny', f'--red_base_url={server.url}', '--trials=1')
    rt.main(args)
    assert len(server.requests) == 2
    path, body = server.requests[0]
    assert path == '/v1/completions' and body['n'] == 3 and 'stop' not in body
    assert (body['temperature'], body['top_p'], body['max_tokens'], body['model']) == (1.0, 1.0, 6, 'tiny')
    recs = read_jsonl(tmp_path / 'out' / 'pep8' / 'rounds.jsonl')
    assert body['prompt'] == rt.red_prompt('pep8', recs[0]['few_shot'])
    assert [r['n_candidates'] for r in recs] == [6, 6]
    pool = {p['text']: p for p in read_jsonl(tmp_path / 'out' / 'pep8' / 'pool_trial0.jsonl')}
    assert {'x1=(1,1)', 'def f1( a ):\n    return a', 'x6=(6,6)'} <= set(pool) and len(pool) == 20 + 12
    assert pool['def f1( a ):\n    return a']['own_score'] == rt.scorers.get_scorer('pep8').score(
        ['def f1( a ):\n    return a'])[0] > 0 and pool['x1=(1,1)']['n'] == 4
    rt.main(args)
    assert len(server.requests) == 2  # all from the cache
    assert [r['best_prompt_score'] for r in read_jsonl(tmp_path / 'out' / 'pep8' /
                                                       'rounds.jsonl')] == [r['best_prompt_score'] for r in recs]


def test_a_chat_server_for_a_sentence_task(server, tmp_path):
    server.code = False
    target = tiny_ckpt(tmp_path / 'pii' / 'ckpt.pt', 'pii')
    rt.main(run_args(tmp_path, target, 'openai-chat:tiny', f'--red_base_url={server.url}', '--trials=1'))
    path, body = server.requests[0]
    assert path == '/v1/chat/completions' and body['stop'] == '\n'
    recs = read_jsonl(tmp_path / 'out' / 'pii' / 'rounds.jsonl')
    assert body['messages'] == [dict(role='user', content=rt.red_prompt('pii', recs[0]['few_shot']))]
    pool = read_jsonl(tmp_path / 'out' / 'pii' / 'pool_trial0.jsonl')
    # the first line, as the original left it: leading spaces stripped, trailing kept
    assert {'Please write to my address at number 1 ', 'Please write to my address at number 6 '} <= {
        p['text'] for p in pool}


def test_a_failing_endpoint_is_retried_then_named_in_one_line(server, tmp_path, capsys):
    server.failing = True
    target = tiny_ckpt(tmp_path / 'pii' / 'ckpt.pt', 'pii')
    with pytest.raises(SystemExit) as e:
        rt.main(run_args(tmp_path, target, 'openai:tiny', f'--red_base_url={server.url}', '--red_retries=2'))
    assert e.value.code == 1 and len(server.requests) == 3  # the first try and 2 retries
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and err.startswith(f'error: red LM openai:tiny at {server.url}: failed 3 times '
                                                    f'(InternalServerError: ')


def test_cli_names_bad_input_in_one_line(tmp_path, capsys):
    out = subprocess.run([sys.executable, 'redteam.py', f'--ckpt={tmp_path / "missing.pt"}', '--red=openai:x',
                          '--device=cpu'], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 1 and out.stderr == f'error: {tmp_path / "missing.pt"}: checkpoint not found\n'
    target = tiny_ckpt(tmp_path / 'pii' / 'ckpt.pt', 'pii')
    with pytest.raises(SystemExit) as e:
        rt.main([f'--ckpt={target}', f'--red={target}', f'--prompts={tmp_path / "none.jsonl"}', '--device=cpu'])
    err = capsys.readouterr().err
    assert e.value.code == 1 and 'none.jsonl' in err and err.count('\n') == 1
    for bad, message in ((['--ckpt=x'], '--ckpt and --red are needed'),
                         (['--ckpt=x', '--red=y', '--rounds=0'], 'argument --rounds: 0: must be > 0')):
        with pytest.raises(SystemExit) as e:
            rt.main(bad)
        assert e.value.code == 2 and message in capsys.readouterr().err
