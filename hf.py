"""
Hugging Face GPT-2 checkpoints in and out: `from_pretrained` loads one (a directory, or a hub name fetched through
huggingface_hub's cache, which honours HF_HOME and HF_HUB_OFFLINE) into model.GPT; `export` writes ours.

The paper's released models (RELEASED, from its README's "Pretrained models"):
- toxicity and PII: GPT-2 small with 50,259 token ids, GPT-2's 50,257 then <|aligned|> = 50257 and
  <|misaligned|> = 50258, the ids we use, so the control tokens keep their meaning. They never saw our 24 space-run
  tokens (data.SPACE_RUNS): a model without them reads a run as single spaces (model_ids), which is exactly GPT-2's
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
from model import GPT, CheckpointError, GPTConfig

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
    return config


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
            if key.endswith(TRANSPOSED):
                v = v.t()  # HF stores these as Conv1D (in, out); we use Linear (out, in)
            if key == 'transformer.wte.weight':
                _copy_embeddings(sd[key], v, config.vocab_size, seed)
            elif key == 'transformer.wpe.weight':
                sd[key].copy_(v[:config.block_size])
            else:
                sd[key].copy_(v)
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


def model_ids(tokens, vocab_size):
    """Token ids of ours as a model with vocab_size ids reads them: unchanged, or for a model without our space runs
    (GPT-2, the paper's released models) each run as single spaces. GPT-2 has no token of two or more spaces and
    every one of its merges ranks before ours, so this is exactly GPT-2's own tokenization of the same text."""
    if vocab_size >= data.VOCAB_SIZE or not any(t in _RUN_LENGTH for t in tokens):
        return tokens
    return [s for t in tokens for s in ([SPACE] * _RUN_LENGTH[t] if t in _RUN_LENGTH else [t])]


def export(model, out_dir):
    """config.json + model.safetensors that transformers' GPT2LMHeadModel loads: the real vocab_size rows (no
    embedding padding), Conv1D weights transposed back; the value head is not part of GPT-2 and is left out."""
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
    with open(os.path.join(out_dir, 'config.json'), 'w') as f:
        json.dump(config, f, indent=1)
