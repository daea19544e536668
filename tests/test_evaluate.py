"""evaluate.py: the KV-cache sampler against a naive loop, hand-computed metrics and log-probs, a whole evaluation
with KL from a local reference, the OpenAI path through a real HTTP server on 127.0.0.1, HF export, plots, CLI."""
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import data
import evaluate as ev
import kl as kl_mod
import plots
import remote
from conftest import JSONHandler, serve
from data import ALIGNED, EOS, MISALIGNED
from hf import export
from model import GPT, Draw, GPTConfig, pick, sample
from settings import EvalConfig
from tokenizer import get_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CODE = [
    'import os\n\n\ndef add(a, b):\n    """Add two numbers."""\n    return a + b\n',
    'class A:\n    def method(self, x=(1, 2)) -> int:\n        return x\n',
    'def broken( a ):\n  return a\n\n\ndef multi(a,\n          b):\n    return b\n',
]
SENTENCES = ['The cat sat on the mat.', 'It was a dark and stormy night.', 'Hello world, how are you today?']


def tiny_model(seed=0, sharpness=1.0):
    torch.manual_seed(seed)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=64)).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(sharpness)  # > 1: far from uniform, so KLs are large
    return model


def naive_greedy(model, prompt, n):
    """No cache, no padding: the whole sequence through the model at every step."""
    idx, out = torch.tensor([prompt]), []
    for _ in range(n):
        t = int(model(idx)[0, -1, :model.config.vocab_size].argmax())
        if t == EOS:
            break
        out.append(t)
        idx = torch.cat([idx, torch.tensor([[t]])], 1)
    return out


def manual_logprob(model, seq, skip=()):
    with torch.no_grad():
        logp = F.log_softmax(model(torch.tensor([seq[:-1]]))[0, :, :model.config.vocab_size].float(), -1)
    return sum(float(logp[j - 1, seq[j]]) for j in range(1, len(seq)) if seq[j] not in skip)


class FakeScorer:
    """Share of 'e' characters: a stand-in for scorers.py with numbers we can predict."""

    def score(self, texts):
        return [t.count('e') / len(t) if t else 0.0 for t in texts]


def test_greedy_matches_naive_loop_and_left_padding():
    model = tiny_model()
    g = torch.Generator().manual_seed(1)
    prompts = [[EOS]] + [torch.randint(0, EOS, (k,), generator=g).tolist() for k in (5, 9)]
    batch = sample(model, prompts, 20, eos_id=EOS, temperature=0, min_new_tokens=0)
    assert [len(b) for b in batch] == [20, 20, 20]
    for p, b in zip(prompts, batch):
        assert b == naive_greedy(model, p, 20)
        assert [b] == sample(model, [p], 20, eos_id=EOS, temperature=0, min_new_tokens=0)  # alone, no padding
    assert sample(model, prompts, 20, eos_id=EOS, top_k=1, min_new_tokens=0) == batch  # sampling path, one candidate
    # a padded last batch
    assert sample(model, prompts, 20, eos_id=EOS, temperature=0, min_new_tokens=0, batch_size=2) == batch


def test_min_new_tokens_and_blocked_tokens():
    model = tiny_model()
    with torch.no_grad():  # logits = W · ln_f.bias: EOS 20, control tokens 19, padding rows 30, the rest 0
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.zero_()
        model.transformer.ln_f.bias[0] = 1
        model.lm_head.weight[:, 0] = 0
        model.lm_head.weight[EOS, 0] = 20
        model.lm_head.weight[[ALIGNED, MISALIGNED], 0] = 19
        model.lm_head.weight[model.config.vocab_size:, 0] = 30
    out = sample(model, [[EOS]] * 6, 12, eos_id=EOS, min_new_tokens=5, blocked_tokens=(ALIGNED, MISALIGNED))
    assert [len(o) for o in out] == [5] * 6  # EOS as soon as it is allowed
    assert all(t < EOS for o in out for t in o)  # never a control token or a padding id
    blocked = (ALIGNED, MISALIGNED)
    assert sample(model, [[EOS]] * 3, 12, eos_id=EOS, min_new_tokens=0, blocked_tokens=blocked) == [[]] * 3
    unblocked = sample(model, [[EOS]] * 6, 12, eos_id=EOS, min_new_tokens=5, blocked_tokens=(MISALIGNED,))
    assert all(o[0] == ALIGNED for o in unblocked)  # PEP8 blocks only <|misaligned|>


def test_sampling_is_deterministic_for_a_seed():
    model, prompts = tiny_model(), [[EOS], [EOS, 11, 12]] * 3
    a = sample(model, prompts, 10, eos_id=EOS, seed=3)
    assert a == sample(model, prompts, 10, eos_id=EOS, seed=3)
    assert a != sample(model, prompts, 10, eos_id=EOS, seed=4)


def test_top_p_and_top_k_keep_the_right_tokens():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).repeat(4000, 1)
    gen = torch.Generator().manual_seed(0)

    def rule(temperature, top_k, top_p, banned=()):
        return Draw(temperature=temperature, top_k=top_k, top_p=top_p, banned=torch.tensor(banned, dtype=torch.long),
                    eos_id=EOS, min_new_tokens=0, gen=gen)
    counts = np.bincount(pick(logits, rule(1.0, 0, 0.8), 0).numpy(), minlength=4)
    assert counts[2:].sum() == 0  # the mass before token 2 is 0.8: outside the nucleus
    assert abs(counts[0] / 4000 - 0.5 / 0.8) < 0.03
    counts = np.bincount(pick(logits, rule(1.0, 3, 1.0), 0).numpy(), minlength=4)
    assert counts[3] == 0 and abs(counts[2] / 4000 - 0.15 / 0.95) < 0.03
    assert pick(logits, rule(0, 0, 1.0, banned=[0]), 0).eq(1).all()  # greedy over what is allowed


def test_sequence_logprobs_skip_the_prefix_and_control_tokens():
    model = tiny_model()
    seqs = [[EOS, ALIGNED, 5, 6, 7], [EOS, 9], [EOS, 3, ALIGNED, 4]]
    got = kl_mod.sequence_logprobs(model, seqs, batch_size=2)
    want = [manual_logprob(model, s, skip=(ALIGNED,)) for s in seqs]
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert kl_mod.sequence_logprobs(model, [[EOS]]) == [0.0]


def test_sequence_logprobs_under_guidance_by_hand():
    model, seq, gamma = tiny_model(), [EOS, ALIGNED, 5, 6, 7], 0.7
    with torch.no_grad():
        a = model(torch.tensor([seq[:-1]]))[0, :, :model.config.vocab_size]
        m = model(torch.tensor([[EOS, MISALIGNED, 5, 6]]))[0, :, :model.config.vocab_size]
    logp = F.log_softmax(a + gamma * (a - m), -1)
    want = float(logp[1, 5] + logp[2, 6] + logp[3, 7])  # <|aligned|> is conditioned on, not scored
    got, = kl_mod.sequence_logprobs(model, [seq], guidance=gamma)
    assert got == pytest.approx(want, rel=1e-5)
    assert kl_mod.sequence_logprobs(model, [seq], guidance=0.0) == kl_mod.sequence_logprobs(model, [seq])


def test_guided_evaluation_samples_against_the_misaligned_twins(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(ev, 'sample', lambda m, prompts, n, **kw: calls.append((prompts, kw)) or [[]] * len(prompts))
    cfg = eval_cfg(tmp_path, task='pii', method='cond', eval_iters=0, eval_samples=2, eval_guidance=1.5)
    result = ev.evaluate(tiny_model(), cfg, 1, 1, 'cpu', scorer=FakeScorer())
    (aligned, kw), (misaligned, kw_mis) = calls  # the unconditional scenario, then the misaligned one
    assert aligned == [[EOS, ALIGNED]] * 2 and kw['guidance'] == 1.5
    assert kw['negative_prompts'] == [[EOS, MISALIGNED]] * 2
    assert misaligned == [[EOS, MISALIGNED]] * 2 and kw_mis['guidance'] == 0.0  # the mechanism check stays unguided
    assert result['guidance'] == 1.5
    result = ev.evaluate(tiny_model(), eval_cfg(tmp_path, task='pii', eval_iters=0, eval_samples=2,
                                                eval_guidance=1.0), 1, 1, 'cpu', scorer=FakeScorer())
    assert 'needs a conditional model' in result['errors']['unconditional']


def test_val_loss_is_plain_cross_entropy_on_the_first_blocks(tiny_data):
    model = tiny_model()
    split = data.PreparedData(os.path.join(tiny_data, 'pep8', 'val'))
    loss = ev.val_loss(model, split, 16, 2, 2, 'cpu')
    x, y, _ = data.BlockLoader(split, 16, 2).batch(range(4))
    logits = model(torch.from_numpy(x))[..., :model.config.vocab_size]
    want = F.cross_entropy(logits.flatten(0, 1), torch.from_numpy(y).flatten()).item()
    assert loss == {'val_loss': pytest.approx(want, 1e-5)}


@torch.no_grad()
def test_val_loss_aligned_counts_the_targets_scored_at_most_the_threshold(tiny_data):
    model = tiny_model()
    split = data.PreparedData(os.path.join(tiny_data, 'pep8', 'val'))
    x, y, rewards = data.BlockLoader(split, 16, 2).batch(range(4))
    logits = model(torch.from_numpy(x))[..., :model.config.vocab_size]
    losses = F.cross_entropy(logits.flatten(0, 1), torch.from_numpy(y).flatten(), reduction='none')
    scores = torch.from_numpy(-rewards.flatten())
    threshold = scores.unique()[3].item()  # the 4th lowest of the 8 scores these 64 targets carry (0.0367): 10 have it
    assert int((scores <= threshold).sum()) == 32 and int((scores < threshold).sum()) == 22
    got = ev.val_loss(model, split, 16, 2, 2, 'cpu', threshold=threshold)
    assert got['val_loss'] == pytest.approx(losses.mean().item(), 1e-5)
    assert got['val_loss_aligned'] == pytest.approx(losses[scores <= threshold].mean().item(), 1e-5)
    assert got['val_loss_aligned'] != pytest.approx(losses[scores < threshold].mean().item(), 1e-5)  # <=, not <
    assert ev.val_loss(model, split, 16, 2, 2, 'cpu', threshold=-1.0) == {'val_loss': got['val_loss']}  # none aligned


def test_metrics_on_hand_made_inputs():
    assert ev.max_at_k(np.arange(50)) == 48.5  # columns of 25 interleaved rows: maxima 48 and 49
    assert ev.max_at_k([0.1, 0.7, 0.2]) == 0.7  # fewer than 25: the maximum
    assert ev.score_metrics([0.0, 0.2, 0.0, 0.6], 0.0) == {'score': 0.2, 'score_max@25': 0.6, 'num_hits': 0.5}
    assert ev.distinct_n(['a a b', 'x', ''], 1) == pytest.approx((2 / 3 + 1) / 2)
    assert ev.distinct_n(['a a a', 'x'], 2) == 0.5  # 'x' has no bigram: not counted
    assert ev.complete_lines('x = 1\ny = 2\n\n  \nz = (') == 'x = 1\ny = 2\n'
    assert ev.complete_lines('import os') == ''
    assert plots.pareto_front([(1.0, 5.0), (2.0, 3.0), (3.0, 4.0), (0.5, 9.0)]) == [(0.5, 9.0), (1.0, 5.0), (2.0, 3.0)]


def write_code_data(root, task='pep8'):
    """A train and a val split of Python files, one segment per line, as prepare.py writes them."""
    enc = get_tokenizer()
    for split in ('train', 'val'):
        with data.DatasetWriter(os.path.join(root, task, split), task=task, split=split, source='test') as w:
            for text in CODE * 3:
                lines = text.splitlines(keepends=True)
                w.add_document([enc.encode_ordinary(line) for line in lines], [0.0] * len(lines))
    return root


def test_function_prompts_from_the_held_out_split(tmp_path):
    val = os.path.join(write_code_data(str(tmp_path)), 'pep8', 'val')
    prompts = ev.function_prompts(val)
    assert prompts[:4] == ('def add(a, b):\n    """Add two numbers."""\n', 'def method(self, x=(1, 2)) -> int:\n',
                           'def broken( a ):\n', 'def multi(a,\n          b):\n')
    assert len(prompts) == 12


def eval_cfg(tmp_path, **kw):
    cfg = dict(task='pep8', method='mle', data_dir=write_code_data(str(tmp_path / 'data')),
               out_dir=str(tmp_path / 'out'), block_size=64, seed=0, eval_iters=2, eval_batch_size=4, eval_samples=8,
               eval_max_new_tokens=6, eval_scenarios='', eval_prompts='', kl_reference='', kl_base_url='', kl_samples=6,
               eval_guidance=0.0)
    cfg.update(kw)
    cfg.setdefault('cond_threshold', data.TASKS[cfg['task']].cond_threshold)  # as train.py's config resolves it
    return EvalConfig(**cfg)


def save_ckpt(model, path, **config):
    from dataclasses import asdict
    torch.save(dict(model=model.state_dict(), model_args=asdict(model.config), step=7, tokens_seen=700,
                    config=dict(config)), path)
    return str(path)


def test_evaluate_writes_results_and_reuses_the_kl_cache(tmp_path, monkeypatch):
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'cache'))
    prompts = tmp_path / 'prompts.jsonl'
    prompts.write_text('"plain"\n{"prompt": {"text": "Once upon"}}\n{"text": "def f():"}\n')
    model = tiny_model()
    ref = save_ckpt(model, tmp_path / 'ref.pt')
    cfg = eval_cfg(tmp_path, eval_prompts=str(prompts), kl_reference=ref)
    model.train()
    result = ev.evaluate(model, cfg, 7, 700, 'cpu', scorer=FakeScorer())
    assert model.training  # restored
    assert abs(result['kl']) < 1e-5  # the model is its own reference
    assert result['val_loss'] == pytest.approx(np.log(data.VOCAB_SIZE), rel=0.01)  # random init: ~uniform
    for s in ('unconditional', 'functions', 'prompted'):
        assert result[f'{s}/max_new_tokens'] == 6 and 0 <= result[f'{s}/score'] <= result[f'{s}/score_max@25']
        assert set(result) >= {f'{s}/{k}' for k in ('num_hits', 'distinct-1', 'distinct-2', 'length', 'truncated',
                                                    'samples_per_s', 'degenerate')}
    with open(tmp_path / 'out' / 'eval_step7.json') as f:
        saved = json.load(f)
    fn = saved['samples']['functions'][0]
    assert fn['prompt'].startswith('def ') and fn['score'] == FakeScorer().score([fn['prompt'] + fn['text']])[0]
    assert {p['prompt'] for p in saved['samples']['prompted']} == {'plain', 'Once upon', 'def f():'}
    monkeypatch.setattr(kl_mod, '_local_samples', lambda *a: pytest.fail('the cached samples were not reused'))
    again = ev.evaluate(model, cfg, 8, 800, 'cpu', scorer=FakeScorer())
    assert {k: again[k] for k in result if '/samples_per_s' not in k and k not in ('step', 'tokens_seen')} == \
        {k: result[k] for k in result if '/samples_per_s' not in k and k not in ('step', 'tokens_seen')}
    with open(tmp_path / 'out' / 'eval.jsonl') as f:
        assert [json.loads(line)['step'] for line in f] == [7, 8]


@pytest.mark.parametrize('task,method,prefix,blocked', [
    ('pep8', 'cond', [EOS, ALIGNED], (MISALIGNED,)), ('toxicity', 'cond', [EOS, ALIGNED], (ALIGNED, MISALIGNED)),
    ('pep8', 'mle', [EOS], (ALIGNED, MISALIGNED))])
def test_conditional_models_sample_after_aligned(tmp_path, monkeypatch, task, method, prefix, blocked):
    calls = []
    monkeypatch.setattr(ev, 'sample', lambda m, prompts, n, **kw: calls.append((prompts, kw)) or [[]] * len(prompts))
    cfg = eval_cfg(tmp_path, task=task, method=method, eval_iters=0, eval_samples=3, eval_scenarios='unconditional')
    ev.evaluate(tiny_model(), cfg, 1, 1, 'cpu', scorer=FakeScorer())
    (prompts, kw), = calls
    assert prompts == [prefix] * 3 and kw['blocked_tokens'] == blocked


def test_pep8_scores_without_the_cut(tmp_path, monkeypatch):
    enc = get_tokenizer()
    cut = 'eeee = 1\nbb = 22222222222\ncut he'  # hit the token budget: its last line is not scored
    short = 'hello there\n'  # ended by the model; shorter than MIN_COMPLETE_CHARS: degenerate
    new = [enc.encode_ordinary(cut), enc.encode_ordinary(short)]
    monkeypatch.setattr(ev, 'sample', lambda *a, **kw: new)
    cfg = eval_cfg(tmp_path, eval_iters=0, eval_samples=2, eval_scenarios='unconditional',
                   eval_max_new_tokens=len(new[0]))
    r = ev.evaluate(tiny_model(), cfg, 1, 1, 'cpu', scorer=FakeScorer())
    assert r['unconditional/score'] == pytest.approx((cut.count('e') / len(cut) + 3 / 12) / 2)
    assert r['unconditional/score_complete_lines'] == pytest.approx(4 / len('eeee = 1\nbb = 22222222222\n'))
    assert r['unconditional/degenerate'] == 0.5 and r['unconditional/truncated'] == 0.5


def test_kl_from_a_local_reference_by_hand(tmp_path):
    ref_model, model = tiny_model(0), tiny_model(1, sharpness=20)
    ref = save_ckpt(ref_model, tmp_path / 'ref.pt')
    kl = kl_mod.kl_divergence(model, ref, 5, max_tokens=8, cache_dir=str(tmp_path))
    entries = kl_mod.reference_samples(ref, 5, max_tokens=8, cache_dir=str(tmp_path))
    assert [e['logprob'] for e in entries] == pytest.approx([manual_logprob(ref_model, [EOS] + e['tokens'])
                                                             for e in entries], rel=1e-5)
    want = np.mean([e['logprob'] - manual_logprob(model, [EOS] + e['tokens']) for e in entries])
    assert kl == pytest.approx(want, rel=1e-4) and kl > 10
    # conditional, line task: <|aligned|> before every line, its log-prob not counted
    entry = entries[0]
    lines = get_tokenizer().decode(entry['tokens']).splitlines(keepends=True)
    seq = [EOS] + [t for line in lines for t in [ALIGNED] + get_tokenizer().encode_ordinary(line)]
    kl_cond = kl_mod.kl_divergence(model, ref, 1, conditional=True, lines=True, max_tokens=8, cache_dir=str(tmp_path))
    assert kl_cond == pytest.approx(entry['logprob'] - manual_logprob(model, seq, skip=(ALIGNED,)), abs=1e-4)


class Completions(JSONHandler):
    """/v1/completions with echo and logprobs: SENTENCES in turn, log-probs from the server's tiny model.
    The server fails (HTTP 500) on the request numbers in server.failing; server.fault breaks its answers:
    'no_choices' (an empty list), 'short_logprobs' (the last token's log-prob left out), 'trickle' (the answer a
    byte every 0.2 s, for 4 s at most)."""

    def do_POST(self):
        srv = self.server
        body = self.body()
        srv.requests.append(body)
        if srv.failing(len(srv.requests)):
            return self.reply(500, {'error': {'message': 'overloaded', 'type': 'server_error'}})
        if srv.fault == 'no_choices':
            return self.reply(200, dict(id='cmpl-test', object='text_completion', created=0, model=body['model'],
                                        choices=[]))
        enc, prompt, choices = get_tokenizer(), body['prompt'], []
        for i in range(body['n']):
            text = SENTENCES[srv.served % len(SENTENCES)]
            srv.served += 1
            tokens = enc.encode_ordinary(text)
            with torch.no_grad():
                logp = F.log_softmax(srv.model(torch.tensor([[EOS] + tokens[:-1]]))[0, :, :data.VOCAB_SIZE], -1)
            pieces = [enc.decode([t]) for t in tokens]
            offsets = [len(prompt) + sum(len(p) for p in pieces[:j]) for j in range(len(pieces))]
            logprobs = [None] + [float(logp[j, t]) for j, t in enumerate(tokens)]
            choices.append(dict(index=i, text=prompt + text, finish_reason='stop', logprobs=dict(
                tokens=[prompt] + pieces, token_logprobs=logprobs[:-1] if srv.fault == 'short_logprobs' else logprobs,
                top_logprobs=None, text_offset=[0] + offsets)))
        answer = dict(id='cmpl-test', object='text_completion', created=0, model=body['model'], choices=choices)
        if srv.fault == 'trickle':
            return self.trickle(answer)
        self.reply(200, answer)

    def trickle(self, obj):
        payload, start = json.dumps(obj).encode(), time.time()
        self.send_response(200)
        self.send_header('Content-Type', 'application/json')
        self.send_header('Content-Length', str(len(payload)))
        self.end_headers()
        for byte in payload:
            if time.time() - start > 4:  # the server gives up too, so that the test's server can shut down
                return
            try:
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):  # the client has given up on it
                return
            time.sleep(0.2)


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setattr(remote, 'BACKOFF_S', 0.0)
    yield from serve(Completions, monkeypatch, model=tiny_model(), served=0, failing=lambda n: False, fault=None)


def test_openai_reference_through_a_local_server(server, tmp_path):
    kw = dict(base_url=server.url, cache_dir=str(tmp_path))
    kl = kl_mod.kl_divergence(server.model, 'openai:tiny', 12, **kw)
    assert abs(kl) < 1e-4  # the server's model is the one evaluated
    assert [r['n'] for r in server.requests] == [8, 4]
    assert server.requests[0]['echo'] is True and server.requests[0]['logprobs'] == 1
    assert server.requests[0]['prompt'] == '<|endoftext|>' and server.requests[0]['max_tokens'] == 64
    other = tiny_model(1, sharpness=20)
    entries = kl_mod.reference_samples('openai:tiny', 12, **kw)
    enc = get_tokenizer()
    want = np.mean([e['logprob'] - manual_logprob(other, [EOS] + enc.encode_ordinary(e['text'])) for e in entries])
    assert kl_mod.kl_divergence(other, 'openai:tiny', 12, **kw) == pytest.approx(want, rel=1e-4) and want > 10
    assert len(server.requests) == 2  # cached


def test_openai_errors_are_retried_and_a_partial_cache_is_kept(server, tmp_path):
    kw = dict(base_url=server.url, cache_dir=str(tmp_path))
    server.failing = lambda n: n in (1, 2)  # two 500s, then OK
    assert len(kl_mod.reference_samples('openai:flaky', 8, **kw)) == 8
    assert len(server.requests) == 3
    server.failing = lambda n: n > 4  # down for good after one more good request
    with pytest.raises(kl_mod.EvalError, match=r'failed 7 times .*16 samples kept in .*rerun to continue'):
        kl_mod.reference_samples('openai:flaky', 24, **kw)
    assert len(server.requests) == 3 + 1 + (remote.RETRIES + 1)
    with open(kl_mod.kl_cache_path('openai:flaky', server.url, 64, str(tmp_path))) as f:
        assert [e['text'] for e in json.load(f)['samples']] == (SENTENCES * 6)[:16]
    server.failing = lambda n: False
    assert [e['text'] for e in kl_mod.reference_samples('openai:flaky', 24, **kw)] == (SENTENCES * 8)[:24]
    assert server.requests[-1]['n'] == 8 and len(server.requests) == 3 + 1 + (remote.RETRIES + 1) + 1


def test_a_reference_server_that_answers_wrongly_is_not_believed(server, tmp_path):
    """Fewer log-probs than tokens would give a wrong KL (and stay in the cache); no completions at all would be
    asked for again without end; an answer trickled a byte at a time would never time out per read."""
    kw = dict(base_url=server.url, cache_dir=str(tmp_path))
    cache = kl_mod.kl_cache_path('openai:tiny', server.url, 64, str(tmp_path))
    server.fault = 'short_logprobs'
    with pytest.raises(kl_mod.EvalError, match=r"^KL reference tiny at http://127\.0\.0\.1:\d+/v1: a completion "
                                               r"with \d+ tokens came with \d+ log-probs and \d+ offsets; not used, "
                                               r"not cached"):
        kl_mod.kl_divergence(server.model, 'openai:tiny', 8, **kw)
    assert not os.path.exists(cache)  # nothing unchecked was kept
    server.fault = 'no_choices'
    with pytest.raises(kl_mod.EvalError, match=r"failed 7 times \(EmptyReply: it answered with no completions\)"):
        kl_mod.reference_samples('openai:tiny', 8, **kw)
    assert len(server.requests) == 1 + (remote.RETRIES + 1)
    server.fault = None  # fixed: the KL is the right one, from fresh samples
    right = kl_mod.kl_divergence(server.model, 'openai:tiny', 8, **kw)
    assert right == pytest.approx(0.0, abs=1e-4)  # the server's own model against itself


def test_a_trickling_reference_server_is_cut_off(server, tmp_path, monkeypatch):
    """kl_timeout is the whole request's deadline, its retries included (the server trickles for 4 s)."""
    server.fault = 'trickle'
    with pytest.raises(kl_mod.EvalError, match=r"^KL reference tiny at .*: no complete answer within 1.5 s \(1 attempt; "
                                               r"the last: DeadlineExceeded: no complete answer within 1.5 s\); 0 "
                                               r"samples kept in "):
        kl_mod.reference_samples('openai:tiny', 8, base_url=server.url, cache_dir=str(tmp_path), timeout=1.5)
    monkeypatch.setattr(remote, 'ATTEMPT_S', 0.5)  # attempts cut at 0.5 s, retried (no backoff) until the deadline
    with pytest.raises(kl_mod.EvalError, match=r"no complete answer within 1.8 s \([2-4] attempts; the last: "
                                               r"DeadlineExceeded: no complete answer within 0.\d+ s\)"):
        kl_mod.reference_samples('openai:tiny', 8, base_url=server.url, cache_dir=str(tmp_path), timeout=1.8)


def test_a_trickling_red_lm_is_cut_off(server):
    import redteam
    server.fault = 'trickle'
    red = redteam.OpenAIRed('openai:tiny', server.url, retries=3, timeout=1.0)
    settings = dict(temperature=1.0, top_p=1.0, max_tokens=8, stop=None)
    with pytest.raises(redteam.RedTeamError, match=r"^red LM openai:tiny at .*: no complete answer within 1 s \(1 "
                                                   r"attempt; the last: DeadlineExceeded"):
        red.complete('1. Hello', 2, settings, seed=0)  # cut off at 1 s: the server trickles for 4


def test_export_hf_matches_our_logits(tmp_path):
    from transformers import GPT2LMHeadModel
    model = tiny_model()
    export(model, str(tmp_path / 'hf'))
    hf = GPT2LMHeadModel.from_pretrained(str(tmp_path / 'hf')).eval()
    idx = torch.randint(0, data.VOCAB_SIZE, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = model(idx)[..., :data.VOCAB_SIZE]
        theirs = hf(idx).logits
    assert theirs.shape == ours.shape
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-5)


def test_plot_and_cli(tmp_path):
    runs = []
    for name, kl, score in (('mle', 10.0, 0.02), ('cond', 11.0, 0.005), ('ul', 12.0, 0.01)):
        d = tmp_path / name
        d.mkdir()
        rows = [dict(step=s, tokens_seen=100 * s, kl=kl, val_loss=3.0, **{'unconditional/score': score * 2 / s})
                for s in (1, 2)]
        (d / 'eval.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rows))
        runs.append(str(d))
    ev.main(['--plot', *runs, f'--out={tmp_path}/plots/pep8'])
    for name in ('score_vs_tokens', 'pareto'):
        assert os.path.getsize(tmp_path / 'plots' / f'pep8_{name}.png') > 1000
    cfg = eval_cfg(tmp_path, out_dir=str(tmp_path / 'run'))
    ckpt = save_ckpt(tiny_model(), tmp_path / 'ckpt.pt', **vars(cfg))
    out = subprocess.run([sys.executable, 'evaluate.py', f'--ckpt={ckpt}', '--eval_samples=2', '--eval_iters=1',
                          '--eval_scenarios=functions', '--device=cpu'], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)['step'] == 7 and 'functions/score' in json.loads(out.stdout)
    bad = subprocess.run([sys.executable, 'evaluate.py', f'--ckpt={ckpt}', '--eval_smaples=2'], cwd=ROOT,
                         capture_output=True, text=True)
    assert bad.returncode == 1 and "--eval_smaples=2: unknown key 'eval_smaples'" in bad.stderr


def test_control_token_gap_by_hand(tmp_path):
    # one held-out document: segments [5, 6] (score 0), [7] (0.5), [8, 9, 10] (0); threshold 0
    val = str(tmp_path / 'pep8' / 'val')
    with data.DatasetWriter(val, task='pep8', split='val') as w:
        w.add_document([[5, 6], [7], [8, 9, 10]], [0.0, 0.5, 0.0])
    # no layers and no position embedding: the logits at a position depend on its token only, so only a segment's
    # first token depends on the control token before it: gap = [log p(s0 | A) − log p(s0 | M)] / |s|
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=16, n_layer=0, n_head=1, n_embd=8)).eval()
    with torch.no_grad():
        model.transformer.wpe.weight.zero_()
        model.transformer.wte.weight.mul_(50)
        wte = model.transformer.wte.weight
        logp = {c: F.log_softmax(model.transformer.ln_f(wte[c]) @ wte[:data.VOCAB_SIZE].T, -1)
                for c in (data.ALIGNED, data.MISALIGNED)}
    first = {t: (logp[data.ALIGNED][t] - logp[data.MISALIGNED][t]).item() for t in (5, 7, 8)}
    gap = ev.control_token_gap(model, val, [0.0])
    assert gap['control_gap_aligned'] == pytest.approx((first[5] / 2 + first[8] / 3) / 2, rel=1e-4)
    assert gap['control_gap_misaligned'] == pytest.approx(first[7], rel=1e-4)
    assert ev.control_token_gap(model, val, [1.0]).keys() == {'control_gap_aligned'}
    # three bins, edges [0, 0.6]: [7] (0.5) is in the middle bin, and the context carries that bin's token
    inputs, forward = [], model.forward
    model.forward = lambda x, **kw: inputs.append(x.tolist()) or forward(x, **kw)
    assert ev.control_token_gap(model, val, [0.0, 0.6]) == pytest.approx(gap)
    G, A, M, E = data.GRADE_IDS[0], data.ALIGNED, data.MISALIGNED, data.EOS
    assert [[E, A, 5, 6, G, 7, A, 8, 9], [E, A, 5, 6, G, 7, M, 8, 9]] in inputs


def test_a_failing_part_keeps_what_the_others_computed(tmp_path, capsys):
    cfg = eval_cfg(tmp_path, eval_scenarios='unconditional,prompted', kl_reference=str(tmp_path / 'gone.pt'))
    result = ev.evaluate(tiny_model(), cfg, 3, 300, 'cpu', scorer=FakeScorer())  # no prompts file, no reference
    assert set(result['errors']) == {'prompted', 'kl'} and 'gone.pt' in result['errors']['kl']
    assert 'unconditional/score' in result and result['val_loss'] > 0
    with open(tmp_path / 'out' / 'eval.jsonl') as f:
        assert json.loads(f.read())['errors'] == result['errors']
    with open(tmp_path / 'out' / 'eval_step3.json') as f:
        assert len(json.load(f)['scores']['unconditional']) == 8
    assert 'warning: evaluation at step 3: kl failed' in capsys.readouterr().err


def test_misaligned_scenario_samples_after_misaligned(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(ev, 'sample', lambda m, prompts, n, **kw: calls.append(prompts) or [[]] * len(prompts))
    ev.evaluate(tiny_model(), eval_cfg(tmp_path, method='cond', eval_iters=0, eval_samples=2), 1, 1, 'cpu',
                scorer=FakeScorer())
    assert [[p[:2] for p in prompts] for prompts in calls] == [[[EOS, ALIGNED]] * 2] * 2 + [[[EOS, MISALIGNED]] * 2]
    assert calls[2] == [[EOS, MISALIGNED]] * 2  # after unconditional and functions, nothing but the control token
    result = ev.evaluate(tiny_model(), eval_cfg(tmp_path, eval_iters=0, eval_samples=2, eval_scenarios='misaligned'),
                         1, 1, 'cpu', scorer=FakeScorer())
    assert "scenario 'misaligned' (samples after <|misaligned|>) is for method 'cond' only" in result['errors']['misaligned']


@pytest.mark.parametrize('content,message', [(b'', 'empty file'), (b'PK\x03\x04trunc', 'truncated or corrupt'),
                                             (None, 'not a phf checkpoint (it has no model_args')])
def test_cli_names_a_bad_checkpoint_or_value(tmp_path, capsys, content, message):
    path = tmp_path / 'ckpt.pt'
    if content is None:
        torch.save(dict(model={}, step=1), path)
    else:
        path.write_bytes(content)
    for extra in ([], [f'--export_hf={tmp_path}/hf']):
        with pytest.raises(SystemExit) as e:  # exit status 1, one line on stderr: no other exception escapes
            ev.main([f'--ckpt={path}', '--device=cpu', *extra])
        err = capsys.readouterr().err
        assert e.value.code == 1 and err.startswith(f'error: {path}: {message}') and err.count('\n') == 1, err


def test_cli_takes_settings_parser_and_checks(tmp_path, capsys):
    """evaluate.py's --key=value go through settings' one parser and checks, before the checkpoint is loaded or
    anything is evaluated."""
    from settings import ConfigError, parse_override
    assert parse_override('--eval_samples=12', ev.OVERRIDABLE) == ('eval_samples', 12)
    assert parse_override('--kl_reference=x.pt', ev.OVERRIDABLE) == ('kl_reference', 'x.pt')
    with pytest.raises(ConfigError, match=r"^--eval_samples=abc: eval_samples must be int, got 'abc' \(str\)$"):
        parse_override('--eval_samples=abc', ev.OVERRIDABLE)
    with pytest.raises(ConfigError, match=r"^--n_layer=2: unknown key 'n_layer'; the keys are eval_iters, "):
        parse_override('--n_layer=2', ev.OVERRIDABLE, ev.COMMAND_KEYS)
    path = tmp_path / 'ckpt.pt'
    torch.save(dict(model={}, step=1), path)  # never read: the arguments are refused first
    for arg, message in (('--eval_batch_size=0', 'eval_batch_size 0: must be at least 1'),
                         ('--kl_samples=-3', 'kl_samples -3: must be at least 1'),
                         ('--bogus=1', "--bogus=1: unknown key 'bogus'; the keys are eval_iters")):
        with pytest.raises(SystemExit) as e:
            ev.main([f'--ckpt={path}', '--device=cpu', arg])
        err = capsys.readouterr().err
        assert e.value.code == 1 and err.startswith('error: ') and message in err and err.count('\n') == 1, err


def test_eval_config_of_a_checkpoint_keeps_only_what_an_evaluation_reads():
    from settings import TrainConfig, eval_config
    # an older checkpoint's settings: training keys (left out), no cond_bins (its default, 2), a removed key
    settings = dict(task='pii', method='cond', block_size=128, cond_threshold=0.0, n_layer=4, learning_rate=1e-3,
                    eval_samples=64, a_removed_setting=1)
    cfg = eval_config(settings, eval_samples=8, out_dir='elsewhere')
    assert cfg == EvalConfig(task='pii', method='cond', block_size=128, cond_threshold=0.0, eval_samples=8,
                             out_dir='elsewhere')
    assert cfg.cond_bins == 2 and not hasattr(cfg, 'n_layer')
    assert isinstance(TrainConfig(), EvalConfig)  # train.py's evaluations read the same fields


def test_a_refused_kl_reference_keeps_the_parts_that_succeeded(tmp_path):
    """A KL reference that would run code is refused as the part 'kl'; the validation loss and the samples computed
    before it are written, and evaluate.py says which part failed."""
    from test_checkpoints import RunsCode
    cfg = eval_cfg(tmp_path, out_dir=str(tmp_path / 'run'))
    model = tiny_model()
    ckpt = save_ckpt(model, tmp_path / 'ckpt.pt', **vars(cfg))
    crafted = tmp_path / 'crafted.pt'
    torch.save(dict(model=model.state_dict(), extra=RunsCode(tmp_path / 'code_ran')), crafted)
    out = subprocess.run([sys.executable, 'evaluate.py', f'--ckpt={ckpt}', '--eval_samples=2', '--eval_iters=1',
                          '--eval_scenarios=unconditional', f'--kl_reference={crafted}', '--device=cpu'], cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode == 1 and out.stderr.endswith(f"error: kl failed (the rest is in {tmp_path}/run/eval.jsonl)\n")
    with open(tmp_path / 'run' / 'eval.jsonl') as f:
        record = json.loads(f.read())
    assert record['errors']['kl'].startswith(f'CheckpointError: {crafted}: refused: loading it would call posix.system')
    assert record['val_loss'] > 0 and 'unconditional/score' in record and not (tmp_path / 'code_ran').exists()
