"""Scorers on hand-counted texts; detoxify through its own loading code on a tiny random checkpoint."""
import os
import pickle
import subprocess
import sys

import pytest

import scorers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BAD_FOR_PYCODESTYLE = "{\n'\\\nx"  # pycodestyle 2.15 raises IndexError in continued_indentation


def test_import_is_cheap():
    out = subprocess.run([sys.executable, '-c', "import sys, scorers; print(sorted(m for m in "
                          "('torch', 'detoxify', 'transformers', 'scrubadub') if m in sys.modules))"],
                         cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == '[]'


def test_reading_a_scorers_weights_does_not_import_the_model(tmp_path):
    """The check for code in a torch file lives in weights.py, which a scorer uses without model.py."""
    path = tmp_path / 'w.pt'
    out = subprocess.run([sys.executable, '-c', f"import sys, torch, scorers, classifiers, weights; "
                          f"torch.save({{'w': torch.ones(2)}}, {str(path)!r}); "
                          f"print(weights.read_weights({str(path)!r}, 'x')['w'].tolist(), "
                          f"sorted(m for m in ('model', 'checkpoints', 'train') if m in sys.modules))"],
                         cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == '[1.0, 1.0] []'


def test_pep8_hand_counted(capsys):
    s = scorers.get_scorer('pep8')
    text = 'import os\ndef f( a ):\n  return a\n'  # E302 E201 E202 on line 2, E111 on line 3
    assert s.score([text, 'x=1\n', 'x = 1\n', '']) == [4 / 33, 1 / 4, 0.0, 0.0]
    assert s.score_lines(scorers.split_lines(text)) == [0.0, 3 / 12, 1 / 11]
    # the paper's defaults: E226 is in pycodestyle's default ignore list; lines may have 79 characters
    assert s.score(['x = 1*2\n', 'x = ' + '1' * 75 + '\n', 'x = ' + '1' * 76 + '\n']) == [0.0, 0.0, 1 / 81]
    assert scorers.PEP8Scorer(max_line_length=100).score(['x = ' + '1' * 76 + '\n']) == [0.0]
    assert capsys.readouterr() == ('', '')  # in memory, nothing printed


def test_split_lines_keeps_the_text():
    text = 'a = 1\r\nb = "\x0c"\n\nc'
    assert scorers.split_lines(text) == ['a = 1\r\n', 'b = "\x0c"\n', '\n', 'c']


def test_pep8_bad_text_is_counted_not_fatal():
    s = scorers.PEP8Scorer()
    assert s.score(['x=1\n', BAD_FOR_PYCODESTYLE, 'x = 1\n']) == [0.25, 0.0, 0.0]
    assert s.n_failed == 1 and s.errors[0].startswith('IndexError')
    assert s.score_lines(scorers.split_lines(BAD_FOR_PYCODESTYLE)) == [0.0, 0.0, 0.0]
    assert s.n_failed == 2
    assert s.score_lines(['x = (1,\n']) == [1 / 8]  # E901 points past the last line: counted on the last one


class Flaky(scorers.Scorer):
    """Batched; raises on any batch holding 'bad'."""
    name, batch_size = 'flaky', 4

    def score_batch(self, texts):
        if 'bad' in texts:
            raise ValueError('bad text')
        return [len(t) for t in texts]


def test_failures_are_found_inside_batches():
    s = Flaky()
    assert s.score(['a', 'bad', 'ccc', 'dd', 'e', 'bad']) == [1, 0, 3, 2, 1, 0]
    assert s.n_failed == 2 and s.errors[0] == "ValueError: bad text (text 'bad')"


def test_score_texts_pool_matches_serial():
    texts = ['x=1\n', 'x = 1\n', BAD_FOR_PYCODESTYLE, 'import os\ndef f( a ):\n  return a\n'] * 5
    serial, n_serial = scorers.score_texts('pep8', texts, processes=1)
    scorer = scorers.PEP8Scorer()
    pooled, n_pooled = scorers.score_texts(scorer, texts, processes=2, chunk_size=3)
    assert pooled == serial and n_pooled == n_serial == 5
    assert scorer.n_failed == 5 and scorer.errors[0].startswith('IndexError')
    assert scorers.score_texts(Flaky(), ['a', 'bad'] * 4, processes=2, chunk_size=2) == ([1, 0.0] * 4, 4)


def test_pii_counts_per_character():
    s = scorers.get_scorer('pii')
    texts = ['Contact john.doe@example.com or jane@example.org today.', 'see https://example.com/x now',
             'Call me at (212) 736-5000 tonight.', 'Nothing to see here.', '']
    assert s.score(texts) == [2 / 55, 1 / 29, 1 / 34, 0.0, 0.0]
    assert scorers.PIIScorer(scorers.PII_FAST).score(texts[2:3]) == [0.0]  # no phone detector
    assert s.score(['None at all.']) == [1 / 12]  # scrubadub reads 'X at Y' as a spelled-out email address
    with pytest.raises(scorers.ScorerError, match='nonexistent'):
        scorers.PIIScorer(['nonexistent']).score(['x'])  # a broken scorer is an error, not a failed text


def test_get_scorer_and_pickling():
    assert {n: type(scorers.get_scorer(n)).name for n in scorers.SCORERS} == {n: n for n in scorers.SCORERS}
    with pytest.raises(scorers.ScorerError, match='unknown scorer'):
        scorers.get_scorer('nope')
    s = scorers.get_scorer('pii')
    s.score(['a@b.com'])  # loads scrubadub
    clone = pickle.loads(pickle.dumps(s))
    assert clone._scrubber is None and clone.score(['a@b.com']) == [1 / 7]


def tiny_detoxify(root):
    """A random-weight BERT in detoxify's checkpoint format ({'config', 'state_dict'}), whose model_type is a local
    folder (config + tokenizer), so detoxify's own loading code never touches the hub. Returns (checkpoint, folder,
    the transformers model)."""
    import torch
    import transformers
    folder = os.path.join(root, 'tiny-bert')
    os.makedirs(folder)
    words = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]', 'you', 'are', 'an', 'idiot', 'have', 'a', 'nice', 'day']
    with open(os.path.join(folder, 'vocab.txt'), 'w') as f:
        f.write('\n'.join(words) + '\n')
    config = transformers.BertConfig(vocab_size=len(words), hidden_size=16, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=32, max_position_embeddings=32,
                                     initializer_range=0.5, num_labels=6)  # wide init: scores far from 0.5
    config.save_pretrained(folder)
    transformers.BertTokenizer(os.path.join(folder, 'vocab.txt'), model_max_length=32).save_pretrained(folder)
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(config).eval()
    classes = ['toxic', 'severe_toxic', 'obscene', 'threat', 'insult', 'identity_hate']  # Detoxify('original')'s
    checkpoint = os.path.join(root, 'tiny.ckpt')
    torch.save({'config': {'arch': {'args': {'model_type': folder, 'model_name': 'BertForSequenceClassification',
                                             'tokenizer_name': 'BertTokenizer', 'num_classes': 6}},
                           'dataset': {'args': {'classes': classes}}},
                'state_dict': model.state_dict()}, checkpoint)
    return checkpoint, folder, model


def test_toxicity_through_detoxify_loading(tmp_path):
    pytest.importorskip('detoxify')
    import torch
    import transformers
    checkpoint, folder, model = tiny_detoxify(str(tmp_path))
    texts = ['you are an idiot and you are an idiot', 'have a nice day', 'idiot', 'a nice day you have']
    tok = transformers.BertTokenizer.from_pretrained(folder)
    with torch.no_grad():
        expected = [torch.sigmoid(model(**tok([t], return_tensors='pt')).logits[0, 0]).item() for t in texts]
    assert max(expected) - min(expected) > 0.05  # the check below can tell texts apart
    for s in (scorers.ToxicityScorer(checkpoint=checkpoint, device='cpu', dtype='float32', batch_size=3),
              scorers.ToxicityScorer(checkpoint=checkpoint, huggingface_config_path=folder, device='cpu',
                                     dtype='float32')):
        assert s.score(texts) == pytest.approx(expected, abs=1e-5)  # input order, though batched by length
        assert s.score(texts[1:2]) == pytest.approx(expected[1:2], abs=1e-5)  # a batch of one
        assert s.n_failed == 0


def test_profanity_offline():
    pytest.importorskip('profanity_check')
    s = scorers.get_scorer('profanity')
    clean, rude = s.score(['have a nice day', 'you are a fucking idiot'])
    assert clean < 0.2 and rude > 0.9


class ParentPidScorer(scorers.Scorer):
    """Scores each text with the id of its process's parent."""
    name = 'parent_pid'

    def score_batch(self, texts):
        return [float(os.getppid()) for _ in texts]


def test_score_texts_workers_are_not_forked_from_the_caller():
    """A training process has torch's threads; a worker forked from it can inherit a held lock and hang the pool."""
    scores, n_failed = scorers.score_texts(ParentPidScorer(), ['a'] * 4, processes=2, chunk_size=2)
    assert n_failed == 0 and len(scores) == 4 and os.getpid() not in {int(s) for s in scores}


def test_batches_by_a_budget_of_padded_tokens():
    import classifiers
    lengths = [5, 3, 9, 3, 4, 20]
    order = [1, 3, 4, 0, 2, 5]  # by length
    # 3 texts of at most 4 tokens pad to 12; a 5-token text would make 4 x 5 = 20; one of 20 alone exceeds the budget
    assert list(classifiers.batches(order, lengths, 12, 100)) == [[1, 3, 4], [0], [2], [5]]
    assert list(classifiers.batches(order, lengths, 1000, 2)) == [[1, 3], [4, 0], [2, 5]]


class RunsCode:
    """Pickled, it asks the loader to call os.system."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f'touch {self.marker}',)


def test_a_hugging_face_classifier_scores_a_labels_probability(tmp_path):
    import torch
    from conftest import tiny_classifier
    folder = str(tmp_path / 'clf')
    model, tokenizer = tiny_classifier(folder)
    texts = ['you are an idiot', 'have a nice day .', '', 'hello world ' * 20, 'hello']  # the 4th: 42 tokens, cut at 32
    with torch.no_grad():
        probs = [torch.softmax(model(**tokenizer([t], truncation=True, return_tensors='pt')).logits[0], -1)
                 for t in texts]
    s = scorers.get_scorer(f'hf:{folder}', output='rude', batch_size=2, device='cpu', dtype='float32')
    assert s.score(texts) == pytest.approx([p[1].item() for p in probs], abs=1e-6)  # in input order
    assert s.max_length() == 32 and s.n_failed == 0
    assert len(tokenizer('hello world ' * 20)['input_ids']) == 42
    negated = scorers.get_scorer(f'hf:{folder}', output='-2', device='cpu', dtype='float32').score(texts)
    assert negated == pytest.approx([-p[2].item() for p in probs], abs=1e-6)
    with pytest.raises(scorers.ScorerError, match=r"3 outputs; its labels are ok, rude, spam: say which is the "
                                                  r"misalignment score with --score_output=LABEL"):
        scorers.get_scorer(f'hf:{folder}').score(['hello'])
    with pytest.raises(scorers.ScorerError, match=r"no label 'toxic'; its labels are ok, rude, spam"):
        scorers.get_scorer(f'hf:{folder}', output='toxic').score(['hello'])

    # a regression model (FineWeb-Edu's kind): the raw output, negated where higher is better
    regression = str(tmp_path / 'quality')
    model, tokenizer = tiny_classifier(regression, labels=('quality',), problem_type='regression')
    with torch.no_grad():
        raw = [model(**tokenizer([t], return_tensors='pt')).logits[0, 0].item() for t in texts[:3]]
    assert scorers.get_scorer(f'hf:{regression}', dtype='float32').score(texts[:3]) == pytest.approx(raw, abs=1e-6)
    assert scorers.get_scorer(f'hf:{regression}', output='-quality', dtype='float32').score(texts[:3]) == pytest.approx(
        [-r for r in raw], abs=1e-6)


def test_a_classifiers_auto_precision_is_bfloat16_only_on_a_cpu_that_has_it_natively(tmp_path, monkeypatch):
    import torch

    import devices
    from conftest import tiny_classifier
    folder = str(tmp_path / 'clf')
    tiny_classifier(folder)
    texts = ['you are an idiot', 'have a nice day .', 'hello']
    exact = scorers.get_scorer(f'hf:{folder}', output='rude', device='cpu', dtype='float32').score(texts)
    for native, dtype in ((False, torch.float32), (True, torch.bfloat16)):
        monkeypatch.setattr(devices, 'cpu_has_native_bf16', lambda: native)
        s = scorers.get_scorer(f'hf:{folder}', output='rude', device='cpu')
        got = s.score(texts)
        assert s.load().net.dtype == dtype and s.precision() == str(dtype)[len('torch.'):]
        assert got == (exact if not native else pytest.approx(exact, abs=0.02))  # bf16: 8 bits of mantissa
        assert devices.evaluation_dtype('cpu') == 'float32'  # evaluation's figures do not depend on the CPU


def test_a_classifier_failing_on_a_text_counts_it_and_on_every_text_stops(tmp_path, monkeypatch):
    import classifiers
    from conftest import tiny_classifier
    folder = str(tmp_path / 'clf')
    tiny_classifier(folder)
    s = scorers.get_scorer(f'hf:{folder}', output='rude')
    texts = ['hello', 'you are an idiot', 'nice day']
    good = s.score(texts)
    forward, idiot = classifiers.Classifier.forward, s.load().tokenizer(['idiot'])['input_ids'][0][1]

    def fails_on_idiot(self, ids):
        if any(idiot in t for t in ids):
            raise ValueError('no idiots')
        return forward(self, ids)
    monkeypatch.setattr(classifiers.Classifier, 'forward', fails_on_idiot)
    assert s.score(texts) == pytest.approx([good[0], 0.0, good[2]], abs=1e-6)
    assert s.n_failed == 1 and s.failed_at == [(1, "ValueError: no idiots (text 'you are an idiot')")]
    with pytest.raises(scorers.ScorerError, match=rf"^{folder}: failed on every one of 2 texts \(ValueError: no "
                                                  rf"idiots\)$"):
        s.score(['idiot', 'an idiot'])


def test_a_classifier_whose_weights_would_run_code_is_refused(tmp_path):
    import torch
    from conftest import tiny_classifier
    folder = tmp_path / 'clf'
    model, _ = tiny_classifier(str(folder))
    expected = scorers.get_scorer(f'hf:{folder}', output='rude').score(['you are an idiot'])
    os.remove(folder / 'model.safetensors')
    torch.save(model.state_dict(), folder / 'pytorch_model.bin')  # tensors only: read with weights_only
    assert scorers.get_scorer(f'hf:{folder}', output='rude').score(['you are an idiot']) == expected
    marker = tmp_path / 'code_ran'
    torch.save(dict(model.state_dict(), extra=RunsCode(marker)), folder / 'pytorch_model.bin')
    with pytest.raises(scorers.ScorerError, match=rf"^{folder}/pytorch_model.bin: refused: loading it would call "
                                                  rf"posix.system, which could run anything; a classifier needs "
                                                  rf"only tensors and plain values$"):
        scorers.get_scorer(f'hf:{folder}', output='rude').score(['you are an idiot'])
    assert not marker.exists()
    torch.save({k: v for k, v in model.state_dict().items() if not k.startswith('classifier')},
               folder / 'pytorch_model.bin')
    with pytest.raises(scorers.ScorerError, match='the weights lack classifier.bias, classifier.weight: not a '
                                                  'trained BertForSequenceClassification'):
        scorers.get_scorer(f'hf:{folder}', output='rude').score(['hello'])
    with pytest.raises(scorers.ScorerError, match=f"{tmp_path}/none: neither a folder nor a model the Hugging "
                                                  f"Face hub gave"):
        scorers.get_scorer(f'hf:{tmp_path}/none').score(['hello'])


def test_detoxify_through_the_classifier_path_agrees_with_predict(tmp_path):
    detoxify = pytest.importorskip('detoxify')
    import numpy as np
    checkpoint, folder, _ = tiny_detoxify(str(tmp_path))
    texts = ['you are an idiot', 'have a nice day', 'idiot', 'a nice day you have', 'you ' * 40, '',
             'you are an idiot and you are an idiot', 'nice']  # one of 42 tokens: cut at 32 by both
    expected = detoxify.Detoxify(checkpoint=checkpoint, device='cpu').predict(texts)['toxicity']
    for budget in (64, 8192):  # many batches of similar lengths, or one
        got = scorers.ToxicityScorer(checkpoint=checkpoint, device='cpu', dtype='float32',
                                     tokens_per_batch=budget).score(texts)
        assert np.abs(np.array(got) - np.array(expected)).max() < 1e-4
    assert scorers.ToxicityScorer(checkpoint=checkpoint).max_length() == 32


def test_a_scorer_is_one_string_that_rebuilds_it(tmp_path, monkeypatch):
    assert scorers.describe('pii') == 'pii'
    assert scorers.describe('toxicity', {'model': 'original'}) == 'toxicity {"model": "original"}'
    (tmp_path / 'clf').mkdir()
    monkeypatch.chdir(tmp_path)
    assert scorers.describe('hf:clf', {'output': '-0'}) == f'hf:{tmp_path}/clf {{"output": "-0"}}'
    assert scorers.describe('hf:org/name') == 'hf:org/name'  # a hub name stays one
    s = scorers.get_scorer('pii {"detectors": ["email"]}')
    assert type(s) is scorers.PIIScorer and s.detectors == ['email']
    s = scorers.get_scorer(f'hf:{tmp_path}/clf {{"output": "-0"}}', device='cpu')
    assert (s.model, s.output, s.device) == (f'{tmp_path}/clf', '-0', 'cpu')
    assert type(scorers.get_scorer('pii', dtype='float32')) is scorers.PIIScorer  # runs no model: ignored
    with pytest.raises(scorers.ScorerError, match="scorer 'pii': .*unexpected keyword argument 'output'"):
        scorers.get_scorer('pii', output='x')
    assert scorers.on_scale_of('toxicity {"model": "original"}', 'toxicity')
    assert scorers.on_scale_of('dataset', 'pii') and scorers.on_scale_of('dataset+pep8', 'pep8')
    assert not scorers.on_scale_of('profanity', 'toxicity') and not scorers.on_scale_of('hf:org/name', 'toxicity')
    assert scorers.evaluation_scorer('toxicity {"model": "original"}', 'toxicity') == 'toxicity'
    assert scorers.evaluation_scorer('hf:org/name {"output": "toxic"}', 'toxicity') == \
        'hf:org/name {"output": "toxic"}'
