"""evaluate.py --export_hf writes a whole Hugging Face model: checked against the clients a Hugging Face user points at
it (AutoTokenizer, AutoModelForCausalLM, pipeline, lm-evaluation-harness's log-likelihood path), offline, on a tiny
model; and such a directory comes back in through init_from and evaluate.py --ckpt."""
import inspect
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import data
import hf
import stats
from checkpoints import CheckpointError
from conftest import ROOT_DIR, make_dataset, tiny_args
from model import GPT, GPTConfig, sample
from tokenizer import decode, get_tokenizer

# the texts the tokenizer must encode as phf does: code with indentation, runs of spaces of every length (those over
# 25 split into several tokens), tabs and line ends, the control tokens inside text, and unicode
TEXTS = [inspect.getsource(json.decoder),
         ''.join(' ' * n + f'x{n}' for n in range(1, 90)),
         'a  b   c\t\td \r\n  e\n\n\n    f' + ' ' * 26 + '\n' + ' ' * 60,
         '<|endoftext|><|aligned|>Contact me at jane@example.com.<|misaligned|> Call  555-0100.<|endoftext|>',
         'Größe, naïve café — 東京の天気は晴れ 🙂👍🏽, Ελληνικά, עִבְרִית, a\u0301 (combining)']


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
    """A tiny conditional PII model, exported with the last evaluation of its run (3 of 10 samples with PII)."""
    root = tmp_path_factory.mktemp('export')
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=64, vocab_size=data.VOCAB_SIZE, n_layer=2, n_head=2, n_embd=32)).eval()
    run_dir = root / 'run'
    run_dir.mkdir()
    (run_dir / 'eval.jsonl').write_text(json.dumps(dict(step=20, val_loss=9.5, kl=1.25)) + '\n')
    scores = [0.0] * 7 + [0.01, 0.02, 0.03]
    heldout = dict(heldout=dict(gap=[[2, 1, 1, 1], [4, 2, 2, 2]]),  # per document: gap 2/1 - 1/1 = 4/2 - 2/2 = 1
                   heldout_misaligned=dict(gap=[[1, 1, 1, 1], [2, 2, 2, 2]], gap_first4=[[3, 1, 1, 1], [3, 1, 1, 1]]))
    (run_dir / 'eval_step20.json').write_text(json.dumps(dict(scores=dict(unconditional=scores), heldout=heldout)))
    ckpt = dict(config=dict(task='pii', method='cond', init_from='scratch'), step=20, tokens_seen=20 * 512)
    out = str(root / 'hf')
    hf.export(model, out, ckpt, str(run_dir))
    return model, out


def test_the_export_is_a_whole_model_directory(exported):
    _, out = exported
    assert set(os.listdir(out)) == {'config.json', 'model.safetensors', 'tokenizer.json', 'tokenizer_config.json',
                                    'generation_config.json', 'README.md'}
    generation = json.load(open(os.path.join(out, 'generation_config.json')))
    assert generation['bad_words_ids'] == [[data.ALIGNED], [data.MISALIGNED]]  # PII blocks both control tokens
    assert (generation['temperature'], generation['top_p'], generation['eos_token_id']) == (0.7, 0.9, data.EOS)
    card = open(os.path.join(out, 'README.md')).read()
    assert card.startswith('# phf GPT-2: pii, cond\n') and '10,240 tokens, 20 steps' in card
    assert "generate('<|endoftext|><|aligned|>')" in card  # the conditional prefix
    lo, hi = stats.wilson(3, 10)  # 3 of 10 samples: [10.8%, 60.3%]
    assert f"| unconditional | 10 | 30.0% [{100 * lo:.1f}, {100 * hi:.1f}] |" in card and '[10.8, 60.3]' in card
    assert '- val_loss: 9.5' in card and '- kl: 1.25' in card
    assert '| <|aligned|> before each segment | +1.000 [+1.000, +1.000] | – |' in card
    assert '| <|misaligned|> before each segment | +0.000 [+0.000, +0.000] | +2.000 [+2.000, +2.000] |' in card


def test_an_mle_export_blocks_both_control_tokens_and_has_no_prefix(tmp_path):
    model = GPT(GPTConfig(block_size=32, vocab_size=data.VOCAB_SIZE, n_layer=1, n_head=1, n_embd=16))
    hf.export(model, str(tmp_path), dict(config=dict(task='pep8', method='mle'), step=1, tokens_seen=32))
    generation = json.load(open(tmp_path / 'generation_config.json'))
    assert generation['bad_words_ids'] == [[data.ALIGNED], [data.MISALIGNED]] and generation['max_new_tokens'] == 640
    card = open(tmp_path / 'README.md').read()
    assert '<|aligned|>' not in card.split('## Sampling')[1] and 'No evaluation was recorded' in card


def test_auto_tokenizer_gives_phf_ids(exported):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(exported[1])
    enc = get_tokenizer()
    for text in TEXTS:
        ids = enc.encode(text, allowed_special='all')
        assert tok(text)['input_ids'] == ids, text[:40]
        assert tok.decode(ids) == text
    assert tok.convert_tokens_to_ids(['<|endoftext|>', '<|aligned|>', '<|misaligned|>']) == [50256, 50257, 50258]
    assert tok(' ' * 8 + 'return')['input_ids'] == [data.SPACE_RUNS[7], 1441]  # 7 spaces, then ' return'


def test_auto_model_logits_equal_phf_logits(exported):
    from transformers import AutoModelForCausalLM
    model, out = exported
    theirs = AutoModelForCausalLM.from_pretrained(out).eval()
    idx = torch.tensor([get_tokenizer().encode(TEXTS[3], allowed_special='all')[:48]])
    with torch.no_grad():
        ours = model(idx)[..., :data.VOCAB_SIZE]
        torch.testing.assert_close(theirs(idx).logits, ours, rtol=1e-5, atol=1e-6)


def test_pipeline_generates_what_phf_generates(exported):
    """Greedy decoding (so both draw the same tokens) with the export's generation config: at least 10 new tokens,
    the control tokens never drawn."""
    from transformers import pipeline
    model, out = exported
    generate = pipeline('text-generation', model=out, device='cpu')
    prompt = '<|endoftext|><|aligned|>Contact'
    result = generate(prompt, do_sample=False, max_new_tokens=16, return_tensors=True)[0]['generated_token_ids']
    prompt_ids = get_tokenizer().encode(prompt, allowed_special='all')
    assert result[:len(prompt_ids)] == prompt_ids
    ours = sample(model, [prompt_ids], 16, eos_id=data.EOS, temperature=0,
                  blocked_tokens=(data.ALIGNED, data.MISALIGNED))[0]
    assert result[len(prompt_ids):] == ours and len(ours) == 16
    text = generate(prompt, do_sample=False, max_new_tokens=16)[0]['generated_text']
    assert text == prompt + decode(ours)


def test_lm_eval_loglikelihoods_equal_phf(exported):
    """lm-evaluation-harness's Hugging Face model (lm_eval.models.huggingface.HFLM, a causal model) scores a request
    (context, continuation) as: the context's trailing whitespace moved to the continuation, context + continuation
    encoded whole and split after the context's own tokens, the model run on all but the last token, and the
    log-softmax of the continuation's positions gathered and summed. lm_eval is not installed here: it pulls about 30
    packages (datasets, pandas, aiohttp, sacrebleu, ...) into CI; this test takes its path with transformers, and the
    same requests through HFLM itself gave the same figures (docs/export.md)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    model, out = exported
    tok, theirs = AutoTokenizer.from_pretrained(out), AutoModelForCausalLM.from_pretrained(out).eval()
    enc = get_tokenizer()
    requests = [('def f(x):\n', '        return  x'), ('My e-mail is  ', 'jane@example.com'),
                ('<|endoftext|><|aligned|>Hello', ' world')]
    for context, continuation in requests:
        n = len(context) - len(context.rstrip())
        context, continuation = (context[:-n], context[-n:] + continuation) if n else (context, continuation)
        whole = tok(context + continuation, add_special_tokens=False)['input_ids']
        ctx = tok(context, add_special_tokens=False)['input_ids']
        cont = whole[len(ctx):]
        inp = torch.tensor([whole[:-1]])
        with torch.no_grad():
            logp = F.log_softmax(theirs(inp).logits[0, -len(cont):].double(), -1)
        lm_eval = logp.gather(-1, torch.tensor(cont)[:, None]).sum().item()
        ids = enc.encode(context + continuation, allowed_special='all')
        assert ids == whole and enc.encode(context, allowed_special='all') == ctx
        with torch.no_grad():
            ours_logp = F.log_softmax(model(torch.tensor([ids[:-1]]))[0, -len(cont):, :data.VOCAB_SIZE].double(), -1)
        phf = ours_logp.gather(-1, torch.tensor(cont)[:, None]).sum().item()
        assert lm_eval == pytest.approx(phf, rel=1e-5)


def test_an_export_comes_back_in(exported, tmp_path, capsys):
    """hf.from_pretrained (init_from=, evaluate.py --ckpt=) reads the export's own vocabulary, and says which it is."""
    model, out = exported
    back = hf.from_pretrained(out, add_ids=False)
    assert f"{out}: 50,283 token ids, phf's (GPT-2's 50,257 ids" in capsys.readouterr().out
    ours, theirs = model.state_dict(), back.state_dict()
    assert ours.keys() == theirs.keys()
    for k in ours:  # the embedding's padding rows past the vocabulary are never tokens: not exported
        rows = slice(0, data.VOCAB_SIZE) if k in ('transformer.wte.weight', 'lm_head.weight') else slice(None)
        assert torch.equal(ours[k][rows], theirs[k][rows]), k
    tiny = make_dataset(str(tmp_path / 'data'), task='pii')
    done = subprocess.run([sys.executable, 'train.py'] + tiny_args(tiny, str(tmp_path / 'finetune'), task='pii',
                                                                   method='cond', init_from=out, block_size=64,
                                                                   n_layer=2, n_head=2, n_embd=32, max_tokens=512),
                          cwd=ROOT_DIR, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "50,283 token ids, phf's" in done.stdout


def test_evaluate_reads_an_exports_task_and_method(exported):
    import evaluate
    model, ckpt = evaluate.hf_checkpoint(exported[1], '', '', 'cpu')
    assert (ckpt['config']['task'], ckpt['config']['method']) == ('pii', 'cond')
    assert evaluate.hf_checkpoint(exported[1], 'toxicity', 'mle', 'cpu')[1]['config']['task'] == 'toxicity'  # said


def test_a_tokenizer_that_is_not_the_models_is_refused(exported, tmp_path):
    """An export's tokenizer.json replaced by GPT-2's own (no space runs): it would give the model other ids."""
    import shutil
    bad = str(tmp_path / 'bad')
    shutil.copytree(exported[1], bad)
    hf.hf_tokenizer(hf.GPT2_IDS).save_pretrained(bad)
    with pytest.raises(CheckpointError, match=rf"^{bad}: its tokenizer.json encodes .* not the tokenizer phf's data"):
        hf.from_pretrained(bad)


def test_a_checkpoint_with_a_layer_missing_is_refused(exported, tmp_path):
    import shutil
    from safetensors.torch import load_file, save_file
    bad = str(tmp_path / 'bad')
    shutil.copytree(exported[1], bad)
    weights = load_file(os.path.join(bad, 'model.safetensors'))
    save_file({k: v for k, v in weights.items() if not k.startswith('transformer.h.1.')},
              os.path.join(bad, 'model.safetensors'))
    with pytest.raises(CheckpointError, match=rf"^{bad}: 12 of the model's tensors are not in the checkpoint "
                                              r"\(h\.1\.ln_1\.weight, h\.1\.ln_1\.bias, "):
        hf.from_pretrained(bad)
    np.testing.assert_equal(len(weights) - len([k for k in weights if not k.startswith('transformer.h.1.')]), 12)
