"""
Hugging Face GPT-2 checkpoints in and out: `from_pretrained` loads one (a directory, or a hub name fetched through
huggingface_hub's cache, which honours HF_HOME and HF_HUB_OFFLINE) into model.GPT; `export` writes ours.

The paper's released models (RELEASED, from its README's "Pretrained models"):
- toxicity and PII: GPT-2 small with 50,259 token ids, GPT-2's 50,257 then <|aligned|> = 50257 and
  <|misaligned|> = 50258, the ids we use, so the control tokens keep their meaning. They never saw our 24 space-run
  tokens (data.SPACE_RUNS): a model without them reads a run as single spaces (ids_for_vocab), which is exactly GPT-2's
  own tokenization of the text, and the sampler never draws an id past the model's real rows.
- AWR and RWR: may also hold the original's value head (`value_head.head.weight`, the same V = -sigmoid(w.h) as
  ours) and its Q-value head (`q_value_head.head.weight`, unused in every config): the value head is loaded into
  ours when the model has one (AWR/RWR finetuning) and otherwise left out, with a line saying so.
- PEP8: codeparrot's tokenizer (32,768 ids), not GPT-2's: refused, as is any checkpoint with fewer than 50,257 ids.
Any other tensor that is not GPT-2's stops the load with its name.
"""
import json
import os
import re

import torch
import torch.nn as nn

import data
from checkpoints import CheckpointError
from model import MIN_NEW_TOKENS, TEMPERATURE, TOP_P, GPT, GPTConfig
from tokenizer import get_tokenizer

RELEASED = {  # hub name: (task, method) of the paper's models
    'tomekkorbak/goofy_pasteur': ('toxicity', 'mle'), 'tomekkorbak/amazing_shannon': ('toxicity', 'filter'),
    'tomekkorbak/hungry_saha': ('toxicity', 'cond'), 'tomekkorbak/nifty_banach': ('toxicity', 'ul'),
    'tomekkorbak/upbeat_ramanujan': ('toxicity', 'awr'), 'tomekkorbak/keen_clarke': ('toxicity', 'rwr'),
    'tomekkorbak/nervous_wozniak': ('pii', 'mle'), 'tomekkorbak/cocky_carson': ('pii', 'filter'),
    'tomekkorbak/boring_mcclintock': ('pii', 'cond'), 'tomekkorbak/affectionate_wescoff': ('pii', 'ul'),
    'tomekkorbak/confident_knuth': ('pii', 'awr'), 'tomekkorbak/gifted_hugle': ('pii', 'rwr'),
    'kejian/mighty-mle': ('pep8', 'mle'), 'kejian/mighty-filtering': ('pep8', 'filter'),
    'kejian/mighty-conditional': ('pep8', 'cond'), 'kejian/mighty-ul': ('pep8', 'ul'),
    'kejian/vigor-awr': ('pep8', 'awr'), 'kejian/mighty-rwr': ('pep8', 'rwr'),
}
GPT2_IDS = data.EOS + 1  # 50,257
WEIGHT_FILES = ('model.safetensors', 'pytorch_model.bin')
TRANSPOSED = ('attn.c_attn.weight', 'attn.c_proj.weight', 'mlp.c_fc.weight', 'mlp.c_proj.weight')  # Conv1D in HF
CODEPARROT = ("the paper's PEP8 models use codeparrot's tokenizer (32,768 ids), not GPT-2's: phf's data, prompts "
              "and samples are GPT-2 token ids, which would be meaningless to it; evaluate it with the original code")


def resolve(path):
    """A local directory holding config.json and the weights: path itself, or the hub's cached copy of a hub name
    (downloaded if missing: resumable; HF_HUB_OFFLINE=1 uses the cache only). The paper's PEP8 models are refused
    here, before anything is downloaded."""
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, 'config.json')):
            raise CheckpointError(f"{path}: no config.json, not a Hugging Face checkpoint (for one of our runs, give "
                                  f"its ckpt.pt)")
        return path
    if RELEASED.get(path, ('',))[0] == 'pep8':
        raise CheckpointError(f"{path}: {CODEPARROT}")
    if os.path.exists(path) or not re.fullmatch(r'[\w.-]+(/[\w.-]+)?', path):
        raise CheckpointError(f"{path}: neither a directory with a Hugging Face checkpoint nor a hub name")
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError
    try:
        directory = os.path.dirname(hf_hub_download(path, 'config.json'))
        for name in WEIGHT_FILES:  # the first one the hub (or, offline, the cache) has
            try:
                hf_hub_download(path, name)
                return directory
            except EntryNotFoundError as e:  # also the cache's LocalEntryNotFoundError
                error = e
        raise error
    except (EntryNotFoundError, OSError, ValueError) as e:  # HfHubHTTPError and offline misses are OSErrors
        reason = str(e).strip().split('\n')[0]
        raise CheckpointError(f"{path}: not a directory, and the Hugging Face hub did not give it ({reason})") from None


def read_config(path):
    """config.json of a GPT-2 checkpoint we can load, checked."""
    with open(os.path.join(path, 'config.json')) as f:
        config = json.load(f)
    if config.get('model_type', 'gpt2') != 'gpt2':
        raise CheckpointError(f"{path}: model_type {config.get('model_type')!r} is not a GPT-2 checkpoint")
    if abs(config.get('layer_norm_epsilon', 1e-5) - 1e-5) > 1e-12:
        raise CheckpointError(f"{path}: layer_norm_epsilon {config['layer_norm_epsilon']} unsupported (GPT-2's: 1e-5)")
    if not config.get('tie_word_embeddings', True):
        raise CheckpointError(f"{path}: untied input and output embeddings; phf's GPT-2 ties them")
    n, padded = config['vocab_size'], GPTConfig(vocab_size=data.VOCAB_SIZE).padded_vocab_size
    if n < GPT2_IDS:
        raise CheckpointError(f"{path}: {n} token ids, fewer than GPT-2's {GPT2_IDS}: not GPT-2's tokenizer" +
                              (f"; {CODEPARROT}" if 32768 <= n <= 32770 else ''))
    if n > padded:
        raise CheckpointError(f"{path}: {n} token ids, more than phf's {data.VOCAB_SIZE} (padded to {padded})")
    vocab = os.path.join(path, 'vocab.json')  # the tokenizer, where it was saved with the model
    if os.path.exists(vocab):
        with open(vocab) as f:
            tokens = json.load(f)
        if tokens.get('<|endoftext|>') != data.EOS or tokens.get('Ġthe') != 262:
            raise CheckpointError(f"{path}: its vocab.json is not GPT-2's (<|endoftext|> is "
                                  f"{tokens.get('<|endoftext|>')}, not {data.EOS})" +
                                  (f"; {CODEPARROT}" if len(tokens) == 32768 else ''))
    if os.path.exists(os.path.join(path, 'tokenizer.json')):
        check_tokenizer(path, n)
    return config


TOKENIZER_PROBE = 'Hello  world<|endoftext|>def f(x):\n        return x  # café'


def check_tokenizer(path, n_ids):
    """A directory's tokenizer.json, where it has one, must give a text the ids the model was trained on: GPT-2's, or
    ours for a model with our space runs (an export of ours)."""
    from tokenizers import Tokenizer
    expected = ids_for_vocab(get_tokenizer().encode(TOKENIZER_PROBE, allowed_special='all'), n_ids)
    found = Tokenizer.from_file(os.path.join(path, 'tokenizer.json')).encode(TOKENIZER_PROBE).ids
    if found != expected:
        raise CheckpointError(f"{path}: its tokenizer.json encodes {TOKENIZER_PROBE!r} to {found[:12]}..., not to "
                              f"{expected[:12]}... as {'phf' if n_ids >= data.VOCAB_SIZE else 'GPT-2'} does: not "
                              f"the tokenizer phf's data is in")


def load_state_dict(path):
    st = os.path.join(path, 'model.safetensors')
    if os.path.exists(st):
        from safetensors.torch import load_file
        return load_file(st)
    pt = os.path.join(path, 'pytorch_model.bin')
    if os.path.exists(pt):
        return torch.load(pt, map_location='cpu', weights_only=True)
    raise CheckpointError(f"{path}: neither model.safetensors nor pytorch_model.bin found")


def from_pretrained(path, add_ids=True, value_head=False, block_size=None, dropout=0.0, seed=0):
    """A GPT from a Hugging Face GPT-2 checkpoint: a directory with config.json and model.safetensors or
    pytorch_model.bin (any GPT-2 size), or a hub name such as 'gpt2' or 'tomekkorbak/hungry_saha' (see resolve).
    add_ids: give the model every id of ours (finetuning): rows it lacks (control tokens, space runs) start at the
    mean of its rows plus 0.01·N(0,1) noise (Hewitt's trick, reference §1.3); else keep its own vocabulary
    (evaluation: what it never learned, it can never be fed nor sample). Padding rows start at the mean.
    value_head: our value head, loaded from the original's where the checkpoint has one (else zero)."""
    path = resolve(path)
    hf_config = read_config(path)
    n_ids, n_positions = hf_config['vocab_size'], hf_config['n_positions']
    vocab_size = data.VOCAB_SIZE if add_ids else min(n_ids, data.VOCAB_SIZE)
    config = GPTConfig(block_size=block_size or n_positions, n_layer=hf_config['n_layer'], n_head=hf_config['n_head'],
                       n_embd=hf_config['n_embd'], vocab_size=vocab_size, dropout=dropout, bias=True,
                       value_head=value_head)
    if config.block_size > n_positions:
        raise CheckpointError(f"{path}: block_size {config.block_size} > its {n_positions} positions")
    model = GPT(config)
    sd, sd_hf = model.state_dict(), load_state_dict(path)
    print(f"{path}: {n_ids:,} token ids, {vocabulary(n_ids)}", flush=True)
    filled = {'lm_head.weight'} | {k for k in sd if k.startswith('value_head')}  # tied to wte; a new head at zero
    with torch.no_grad():
        for k, v in sd_hf.items():
            k = k.removeprefix('transformer.')
            if k.endswith(('.attn.bias', '.attn.masked_bias')):
                continue  # causal-mask buffers
            if k == 'lm_head.weight':  # tied to wte: the same tensor, or the checkpoint is another model
                wte = sd_hf.get('transformer.wte.weight', sd_hf.get('wte.weight'))
                if wte is not None and not torch.equal(v, wte):
                    raise CheckpointError(f"{path}: lm_head.weight differs from wte; phf's GPT-2 ties them")
                continue
            if k in ('value_head.head.weight', 'q_value_head.head.weight'):
                _original_head(path, k, v, sd if value_head and k.startswith('value_head') else None)
                continue
            key = 'transformer.' + k
            if key not in sd:
                raise CheckpointError(f"{path}: unexpected tensor {k} {tuple(v.shape)}: not part of GPT-2")
            filled.add(key)
            if key.endswith(TRANSPOSED):
                v = v.t()  # HF stores these as Conv1D (in, out); we use Linear (out, in)
            if key == 'transformer.wte.weight':
                _copy_embeddings(sd[key], v, config.vocab_size, seed)
            elif key == 'transformer.wpe.weight':
                sd[key].copy_(v[:config.block_size])
            else:
                sd[key].copy_(v)
    missing = [k.removeprefix('transformer.') for k in sd if k not in filled]
    if missing:  # left at their random initial values, the model would be silently wrong
        raise CheckpointError(f"{path}: {len(missing)} of the model's tensors are not in the checkpoint "
                              f"({', '.join(missing[:6])}{', ...' if len(missing) > 6 else ''}): a partial or "
                              f"damaged save, or a model of another shape than its config.json says")
    return model


def _original_head(path, key, v, sd):
    """The original's value head (into ours, when sd is given) or its Q-value head (never used): said, not silent."""
    if sd is not None:
        sd['value_head.weight'].copy_(v)
        print(f"{path}: value head loaded from {key}")
    else:
        why = 'the original Q-value head, unused' if key.startswith('q_') else 'this model has no value head'
        print(f"{path}: {key} {tuple(v.shape)} left out ({why})")


def _copy_embeddings(wte, v, vocab_size, seed):
    """wte (padded rows, n_embd) from the checkpoint's rows v; rows it lacks up to vocab_size at the mean plus noise,
    padding rows at the mean (a checkpoint's own rows past vocab_size stay, as padding: never a token)."""
    n = v.size(0)
    wte[:n].copy_(v)
    mean = v.float().mean(0)
    if vocab_size > n:
        g = torch.Generator().manual_seed(seed)
        wte[n:vocab_size].copy_(mean + 0.01 * torch.randn(vocab_size - n, v.size(1), generator=g))
    wte[max(n, vocab_size):].copy_(mean)


_RUN_LENGTH = {i: n for n, i in data.SPACE_RUNS.items()}
SPACE = 220  # GPT-2's ' '


def ids_for_vocab(tokens, vocab_size):
    """Token ids of ours as a model with vocab_size ids reads them: unchanged, or for a model without our space runs
    (GPT-2, the paper's released models) each run as single spaces. GPT-2 has no token of two or more spaces and
    every one of its merges ranks before ours, so this is exactly GPT-2's own tokenization of the same text."""
    if vocab_size >= data.VOCAB_SIZE or not any(t in _RUN_LENGTH for t in tokens):
        return tokens
    return [s for t in tokens for s in ([SPACE] * _RUN_LENGTH[t] if t in _RUN_LENGTH else [t])]


def exported_task_and_method(path):
    """(task, method) that an export of ours records in its config.json, ('', '') for any other directory."""
    config = os.path.join(path, 'config.json')
    if not os.path.isfile(config):
        return '', ''
    with open(config) as f:
        phf = json.load(f).get('phf') or {}
    return phf.get('task', ''), phf.get('method', '')


def vocabulary(vocab_size):
    """What a vocabulary of vocab_size ids is, in words (the loaders say which one they found)."""
    if vocab_size >= data.VOCAB_SIZE:
        return (f"phf's (GPT-2's 50,257 ids, <|aligned|> = {data.ALIGNED}, <|misaligned|> = {data.MISALIGNED}, one "
                f"token per run of 2-25 spaces at {min(_RUN_LENGTH)}-{max(_RUN_LENGTH)})")
    if vocab_size > data.MISALIGNED:
        return "GPT-2's and the two control tokens, no space runs (the paper's released models): runs of spaces " \
               "are read as single spaces"
    return "GPT-2's own, no control tokens: runs of spaces are read as single spaces"


# ----------------------------------------------------------------------------------------------------------------
# Out: a complete Hugging Face model directory

def hf_tokenizer(vocab_size=data.VOCAB_SIZE):
    """phf's tokenizer (tokenizer.get_tokenizer) as a transformers PreTrainedTokenizerFast, built with the `tokenizers`
    classes: a byte-level BPE over GPT-2's ranks and our space runs, its merges derived from the ranks as
    transformers' TikTokenConverter derives them, GPT-2's pre-tokenizing pattern, and <|endoftext|>, <|aligned|>,
    <|misaligned|> as special tokens at their ids. It gives every text the ids phf gives it (tests/test_export.py).
    vocab_size: only the ids below it (a model without the space runs has GPT-2's own tokenization)."""
    from tiktoken_ext.openai_public import r50k_pat_str
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter
    enc = get_tokenizer()
    ranks = {token: i for token, i in enc._mergeable_ranks.items() if i < vocab_size}

    class FromRanks(TikTokenConverter):
        load_tiktoken_bpe = staticmethod(lambda _: ranks)

    vocab, merges = FromRanks().extract_vocab_merges_from_model(None)
    special = {token: i for token, i in enc._special_tokens.items() if i < vocab_size}
    tok = Tokenizer(models.BPE({**vocab, **special}, merges, fuse_unk=False, ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(r50k_pat_str), behavior='isolated'),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in special])
    eos = '<|endoftext|>'
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=eos, eos_token=eos, unk_token=eos,
                                   extra_special_tokens=[t for t in special if t != eos],
                                   clean_up_tokenization_spaces=False)


def generation_config(task, method):
    """The paper's sampling settings (reference §5.1) as a transformers GenerationConfig; the control tokens never
    drawn (a conditional model: the task's blocked ones; any other: both, it never learned them)."""
    from transformers import GenerationConfig
    t = data.TASKS.get(task)
    blocked = data.sampling_controls(task, method)[1] if t and method in data.METHODS else data.CONTROL_TOKENS
    return GenerationConfig(do_sample=True, temperature=TEMPERATURE, top_p=TOP_P, min_new_tokens=MIN_NEW_TOKENS,
                            max_new_tokens=t.max_new_tokens if t else 128, bos_token_id=data.EOS,
                            eos_token_id=data.EOS, pad_token_id=data.EOS, bad_words_ids=[[i] for i in blocked])


def export(model, out_dir, ckpt=None, run_dir=None):
    """A directory that transformers loads as a whole model: config.json and model.safetensors (GPT2LMHeadModel:
    the real vocab_size rows, no embedding padding, Conv1D weights transposed back; the value head is not part of
    GPT-2 and is left out), the tokenizer (hf_tokenizer), generation_config.json and README.md, the model card (what
    it was trained on and how, how to prompt it, its last evaluation with intervals where run_dir holds one).
    ckpt: the checkpoint dict it came from (its config, step and tokens)."""
    from safetensors.torch import save_file
    c = model.config
    sd = {}
    for k, v in model.state_dict().items():
        if k == 'lm_head.weight' or k.startswith('value_head'):
            continue  # lm_head is tied to wte
        v = v[:c.vocab_size] if k == 'transformer.wte.weight' else v.t() if k.endswith(TRANSPOSED) else v
        sd[k] = v.detach().cpu().contiguous().clone()
    for name, m in model.transformer.named_modules():  # bias=False: GPT-2 has biases, zeros are the same model
        if isinstance(m, (nn.Linear, nn.LayerNorm)) and m.bias is None:
            sd[f'transformer.{name}.bias'] = torch.zeros(m.weight.shape[0], dtype=m.weight.dtype)
    os.makedirs(out_dir, exist_ok=True)
    save_file(sd, os.path.join(out_dir, 'model.safetensors'), metadata={'format': 'pt'})
    config = dict(architectures=['GPT2LMHeadModel'], model_type='gpt2', vocab_size=c.vocab_size,
                  n_positions=c.block_size, n_embd=c.n_embd, n_layer=c.n_layer, n_head=c.n_head,
                  activation_function='gelu_new', layer_norm_epsilon=1e-5, resid_pdrop=0.0, embd_pdrop=0.0,
                  attn_pdrop=0.0, bos_token_id=data.EOS, eos_token_id=data.EOS, tie_word_embeddings=True,
                  torch_dtype=str(next(model.parameters()).dtype).removeprefix('torch.'))
    trained = (ckpt or {}).get('config', {})
    if trained.get('task'):  # what evaluate.py --ckpt=DIR needs to know of it (Hugging Face ignores the key)
        config['phf'] = dict(task=trained['task'], method=trained.get('method', 'mle'))
    with open(os.path.join(out_dir, 'config.json'), 'w') as f:
        json.dump(config, f, indent=1)
    tokenizer = hf_tokenizer(c.vocab_size)
    tokenizer.model_max_length = c.block_size
    tokenizer.save_pretrained(out_dir)
    generation_config(trained.get('task'), trained.get('method')).save_pretrained(out_dir)
    with open(os.path.join(out_dir, 'README.md'), 'w') as f:
        f.write(model_card(model, ckpt, run_dir))


def model_card(model, ckpt, run_dir):
    """README.md of an export: the model, its training (task, method, tokens), how to sample it (the conditional
    prefix), and its last evaluation in run_dir (eval.jsonl, eval_step{N}.json), each figure with its interval."""
    import stats
    c, trained = model.config, (ckpt or {}).get('config', {})
    task, method = trained.get('task', 'unknown'), trained.get('method', 'unknown')
    cond = method in data.METHODS and data.METHODS[method].conditional
    lines = [f"# phf GPT-2: {task}, {method}", '',
             f"A GPT-2 ({c.n_layer} layers, {c.n_head} heads, {c.n_embd} wide, {model.num_params() / 1e6:.2f}M "
             f"parameters besides the embedding, {c.block_size} positions) trained from "
             f"{trained.get('init_from', 'scratch')} with phf's `{method}` objective on the `{task}` task's data: "
             f"{(ckpt or {}).get('tokens_seen', 0):,} tokens, {(ckpt or {}).get('step', 0):,} steps. phf reproduces "
             f"*Pretraining Language Models with Human Preferences* (Korbak et al., 2023, arXiv 2302.08582).", '',
             f"Vocabulary: {c.vocab_size:,} ids: {vocabulary(c.vocab_size)}. Use the tokenizer in this directory: "
             f"GPT-2's own gives runs of spaces other ids.", '',
             '## Sampling', '',
             ("A conditional model: start every prompt with `<|endoftext|><|aligned|>` for text like the aligned part "
              "of its training data (`<|misaligned|>` asks for the rest). generation_config.json never samples the "
              "control tokens." if cond else
              "generation_config.json holds the paper's settings and never samples the control tokens, which this "
              "model was not trained with."), '', '```python', 'from transformers import pipeline', '',
             "generate = pipeline('text-generation', model='PATH/TO/THIS/DIRECTORY')",
             f"print(generate({'<|endoftext|><|aligned|>' if cond else '<|endoftext|>'!r})[0]['generated_text'])",
             '```', '']
    return '\n'.join(lines + evaluation_lines(run_dir, task, stats)) + '\n'


def evaluation_lines(run_dir, task, stats):
    """The model card's evaluation section from the run's last evaluation, or a line saying there is none."""
    path = os.path.join(run_dir or '', 'eval.jsonl')
    if not run_dir or not os.path.exists(path):
        return ['## Evaluation', '', 'No evaluation was recorded with this checkpoint.']
    with open(path) as f:
        last = [json.loads(line) for line in f if line.strip()][-1]
    lines = ['## Evaluation', '', f"phf's evaluation at step {last['step']:,} (95% intervals: Wilson for the share "
             f"of samples, bootstrap for the mean score):", '']
    scores_path = os.path.join(run_dir, f"eval_step{last['step']}.json")
    if task in data.TASKS and os.path.exists(scores_path):
        with open(scores_path) as f:
            saved = json.load(f)
        scores, t = saved['scores'], data.TASKS[task]
        lines += [f"| scenario | samples | with {t.hit_name} | mean score |", '|---|---|---|---|']
        for scenario, values in scores.items():
            if values:
                fig = stats.scenario_figures(values, t.hit_threshold)
                lo, hi = fig['hit_rate_ci']
                lines.append(f"| {scenario} | {fig['n']:,} | {100 * fig['hit_rate']:.1f}% [{100 * lo:.1f}, "
                             f"{100 * hi:.1f}] | {fig['score']:.3g} [{fig['score_ci'][0]:.3g}, "
                             f"{fig['score_ci'][1]:.3g}] |")
        lines.append('')
        lines += heldout_lines(saved.get('heldout', {}), t)
    lines += [f"- {key}: {last[key]:.4g}" for key in ('val_loss', 'val_loss_aligned', 'kl') if key in last]
    return lines


def heldout_lines(heldout_sums, task):
    """The model card's held-out gap (heldout.py) with its bootstrap intervals over held-out documents, if recorded."""
    import heldout
    if not heldout_sums:
        return []
    lines = [f"Held-out gap: on held-out text, the mean loss (nats per token) of the segments with {task.hit_name} "
             f"minus that of the other segments; higher means the model finds {task.hit_name} less likely than other "
             f"text (no sampling in it; 95% bootstrap intervals over the held-out documents):", '',
             '| read with | every token | the first 4 tokens of a segment |', '|---|---|---|']
    for prefix, sums in heldout_sums.items():
        cells = []
        for variant in heldout.VARIANTS:
            if variant in sums:
                lo, hi = heldout.gap_interval(sums[variant])
                cells.append(f"{heldout.gap(sums[variant]):+.3f} [{lo:+.3f}, {hi:+.3f}]")
            else:
                cells.append('–')
        read = {'heldout': '<|aligned|> before each segment', 'heldout_misaligned': '<|misaligned|> before each '
                'segment'}[prefix] if 'heldout_misaligned' in heldout_sums else 'nothing added'
        lines.append(f"| {read} | {' | '.join(cells)} |")
    return lines + ['']
