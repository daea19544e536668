"""
Hugging Face sequence classifiers as misalignment scorers (scorers.ClassifierScorer, prepare.py --scorer=hf:NAME), and
detoxify's models through the same path (scorers.ToxicityScorer): detoxify's checkpoint holds the weights of the
transformers model it wraps, which is built here and run the same way.

    clf = load_folder('HuggingFaceFW/fineweb-edu-classifier', output='-0')   # or a local folder
    scores, failed = clf.score(texts, tokens_per_batch=2048)

Loading runs no code from the files: the weights come from model.safetensors (or a torch file that holds only tensors,
weights.read_weights), the model class from transformers' own table for the config's model_type (never the
repository's code: a config that asks for it is refused), the tokenizer from its files. The model runs in
torch.inference_mode, in what dtype='auto' means on its device (devices.default_dtype: bfloat16 on a GPU and on a CPU
with AMX or AVX512-BF16, else float32); texts are tokenized once, truncated at the model's maximum length, sorted by
length and batched by a budget of padded tokens, so that a batch wastes little on padding.

Which output is the score (output='[-]LABEL'): LABEL is a label name of the config's id2label or its index; the score is
that label's probability (softmax over the labels, or a sigmoid for a multi-label model or one with a single output),
or the raw output of a regression model (problem_type 'regression'); a leading '-' negates it, for a classifier whose
output grows with quality rather than harm (FineWeb-Edu's educational score: output='-0').
"""
import os

SOFTMAX, SIGMOID, RAW = 'softmax', 'sigmoid', 'raw'
FOLDER_FILES = ['*.json', '*.txt', '*.model', 'model*.safetensors']  # config, tokenizer, weights: what the hub gives
DETOXIFY_NAMES = {'toxic': 'toxicity', 'identity_hate': 'identity_attack', 'severe_toxic': 'severe_toxicity'}


class ClassifierError(Exception):
    """A classifier that cannot be loaded or used as a scorer; one line saying why."""


class Classifier:
    """A loaded classifier: model (eval mode, on its device), tokenizer, and which output is the score."""

    def __init__(self, net, tokenizer, index, activation, sign, max_length):
        self.net, self.tokenizer, self.index, self.activation, self.sign = net, tokenizer, index, activation, sign
        self.max_length = max_length
        self.device = next(net.parameters()).device

    def score(self, texts, tokens_per_batch, max_texts):
        """(one score per text, [(position, exception)] of the texts that failed and scored 0.0). Texts are sorted by
        token count and cut into batches of at most tokens_per_batch padded tokens and max_texts texts."""
        ids, failed = self.tokenize(texts)
        order = sorted((i for i in range(len(texts)) if ids[i] is not None), key=lambda i: len(ids[i]))
        scores = [0.0] * len(texts)
        for batch in batches(order, [len(t) if t is not None else 0 for t in ids], tokens_per_batch, max_texts):
            try:
                values = self.forward([ids[i] for i in batch])
            except Exception:  # find the text(s) it failed on
                values = []
                for i in batch:
                    try:
                        values += self.forward([ids[i]])
                    except Exception as e:
                        failed.append((i, e))
                        values.append(0.0)
            for i, v in zip(batch, values):
                scores[i] = v
        if len(failed) == len(texts) > 1:  # not a bad text: the model cannot run
            e = failed[0][1]
            raise ClassifierError(f"failed on every one of {len(texts)} texts ({type(e).__name__}: "
                                  f"{str(e).splitlines()[0][:200] if str(e) else ''})")
        return scores, sorted(failed, key=lambda f: f[0])

    def tokenize(self, texts):
        """Token ids of each text (None where the tokenizer fails on it) and [(position, exception)] of those."""
        kwargs = dict(truncation=True, max_length=self.max_length, return_attention_mask=False,
                      return_token_type_ids=False)
        try:
            return self.tokenizer(list(texts), **kwargs)['input_ids'], []
        except Exception:
            ids, failed = [], []
            for i, text in enumerate(texts):
                try:
                    ids.append(self.tokenizer([text], **kwargs)['input_ids'][0])
                except Exception as e:
                    ids.append(None)
                    failed.append((i, e))
            return ids, failed

    def forward(self, ids):
        import torch
        with torch.inference_mode():
            batch = self.tokenizer.pad({'input_ids': ids}, return_tensors='pt').to(self.device)
            logits = self.net(**batch).logits.float()
            if self.activation == SOFTMAX:
                values = torch.softmax(logits, -1)[:, self.index]
            elif self.activation == SIGMOID:
                values = torch.sigmoid(logits[:, self.index])
            else:
                values = logits[:, self.index]
            return (self.sign * values).tolist()


def batches(order, lengths, tokens_per_batch, max_texts):
    """Consecutive runs of `order` (positions sorted by length, ascending) whose padded size, texts × the longest,
    stays within tokens_per_batch (a longer text alone makes a batch of one) and whose count within max_texts."""
    batch = []
    for i in order:
        if batch and ((len(batch) + 1) * lengths[i] > tokens_per_batch or len(batch) >= max_texts):
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch


def default_device():
    """This rank's GPU (LOCAL_RANK under torchrun) where there is one, else the CPU."""
    import torch
    if not torch.cuda.is_available():
        return 'cpu'
    local_rank, n_gpus = int(os.environ.get('LOCAL_RANK', 0)), torch.cuda.device_count()
    if local_rank >= n_gpus:
        raise ClassifierError(f"local rank {local_rank} on a machine with {n_gpus} GPUs: a model scorer takes a GPU "
                              f"a rank, so start at most {n_gpus} a machine (torchrun --nproc_per_node={n_gpus})")
    return f"cuda:{local_rank}"


def run_dtype(device, dtype):
    """The name of the dtype a model runs in on device (None: default_device): dtype, or for 'auto' what it means
    there (devices.default_dtype)."""
    if dtype != 'auto':
        return dtype
    import torch

    import devices
    return devices.default_dtype(torch.device(device or default_device()).type)


def quiet_transformers():
    import transformers
    transformers.utils.logging.set_verbosity_error()  # no load reports or progress bars in prepare.py's output
    transformers.utils.logging.disable_progress_bar()
    return transformers


def build(config, state_dict, tokenizer, output, device=None, dtype='auto'):
    """A Classifier from a transformers config, the weights, a tokenizer and the output spec '[-]LABEL'."""
    import torch
    transformers = quiet_transformers()
    mapping = transformers.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING
    if type(config) not in mapping:
        raise ClassifierError(f"model_type {config.model_type!r} has no sequence classification model in transformers")
    net, info = mapping[type(config)].from_pretrained(None, config=config, state_dict=state_dict,
                                                      output_loading_info=True)
    missing = sorted(info['missing_keys'])
    if missing:
        raise ClassifierError(f"the weights lack {', '.join(missing[:3])}: not a trained {type(net).__name__}")
    if tokenizer.pad_token is None:  # a GPT-style classifier: pad with its end-of-text token, which it then skips
        tokenizer.pad_token = tokenizer.eos_token
    if net.config.pad_token_id is None:
        net.config.pad_token_id = tokenizer.pad_token_id
    device = torch.device(device or default_device())
    if device.type == 'cuda' and device.index is not None:  # the current GPU: no other GPU's memory is touched
        torch.cuda.set_device(device)
    net = net.to(device=device, dtype=getattr(torch, run_dtype(device, dtype))).eval()
    index, activation, sign = output_of(config, output)
    return Classifier(net, tokenizer, index, activation, sign, max_length(config, tokenizer))


def output_of(config, output):
    """(index, activation, sign) of the output spec '[-]LABEL' for this config."""
    labels = [str(config.id2label[i]) for i in range(config.num_labels)]
    sign, label = (-1, output[1:]) if output.startswith('-') else (1, output)
    if not label and len(labels) == 1:
        index = 0
    elif label in labels:
        index = labels.index(label)
    elif label.isdigit() and int(label) < len(labels):
        index = int(label)
    else:
        what = f"no label {label!r}" if label else f"{len(labels)} outputs"
        raise ClassifierError(f"{what}; its labels are {', '.join(labels)}: say which is the misalignment score with "
                              f"--score_output=LABEL (-LABEL where a higher output is better)")
    if config.problem_type == 'regression':
        return index, RAW, sign
    multi = config.problem_type == 'multi_label_classification' or len(labels) == 1
    return index, SIGMOID if multi else SOFTMAX, sign


def max_length(config, tokenizer):
    """The most tokens the model reads: its tokenizer's model_max_length where set, else its position embeddings (2
    fewer for RoBERTa's family, whose positions start after the padding index)."""
    if tokenizer.model_max_length < 1_000_000:
        return int(tokenizer.model_max_length)
    positions = getattr(config, 'max_position_embeddings', 512)
    return positions - 2 if 'roberta' in config.model_type else positions


def resolve(name):
    """A local folder with config.json, or the hub client's cached snapshot of a hub name (downloaded if missing:
    config, tokenizer files, safetensors weights; a pytorch_model.bin only where there are no safetensors)."""
    if os.path.isdir(name):
        if not os.path.isfile(os.path.join(name, 'config.json')):
            raise ClassifierError(f"{name}: no config.json, not a Hugging Face model folder")
        return name
    from huggingface_hub import snapshot_download
    try:
        folder = snapshot_download(name, allow_patterns=FOLDER_FILES)
        if not any(n.endswith('.safetensors') for n in os.listdir(folder)):
            folder = snapshot_download(name, allow_patterns=FOLDER_FILES + ['pytorch_model.bin'])
        return folder
    except Exception as e:  # offline without a cached copy, no such repo: say which
        reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise ClassifierError(f"{name}: neither a folder nor a model the Hugging Face hub gave ({reason})") from None


def read_folder_weights(folder):
    """The state dict of a model folder: its model*.safetensors files, else pytorch_model.bin if it holds data only."""
    from weights import read_weights
    shards = sorted(n for n in os.listdir(folder) if n.startswith('model') and n.endswith('.safetensors'))
    files = shards or (['pytorch_model.bin'] if os.path.isfile(os.path.join(folder, 'pytorch_model.bin')) else [])
    if not files:
        raise ClassifierError(f"{folder}: no model.safetensors (or pytorch_model.bin)")
    state_dict = {}
    for name in files:
        try:
            state_dict.update(read_weights(os.path.join(folder, name), 'a classifier'))
        except ValueError as e:
            raise ClassifierError(str(e)) from None
    return state_dict


def load_folder(name, output='', device=None, dtype='auto'):
    """A Classifier from a Hugging Face model folder or hub name."""
    transformers = quiet_transformers()
    folder = resolve(name)
    try:
        config = transformers.AutoConfig.from_pretrained(folder)
    except ValueError as e:  # e.g. a model_type transformers does not know, whose code only its repository has
        raise ClassifierError(f"{name}: {str(e).splitlines()[0][:200]} (phf never runs a repository's code)") from None
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    return build(config, read_folder_weights(folder), tokenizer, output, device, dtype)


def detoxify_checkpoint(model, checkpoint):
    """The path of a detoxify checkpoint: `checkpoint` itself, or the released one of model ('original',
    'unbiased', ...) in torch hub's cache (where detoxify keeps it), downloaded there if missing."""
    if checkpoint:
        return checkpoint
    import torch
    from detoxify.detoxify import MODEL_URLS
    if model not in MODEL_URLS:
        raise ClassifierError(f"no detoxify model {model!r}; choose one of {', '.join(MODEL_URLS)}")
    path = os.path.join(torch.hub.get_dir(), 'checkpoints', os.path.basename(MODEL_URLS[model]))
    if not os.path.isfile(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        torch.hub.download_url_to_file(MODEL_URLS[model], path)
    return path


def load_detoxify(model='unbiased', checkpoint=None, huggingface_config_path=None, device=None, dtype='auto'):
    """Detoxify's model as a Classifier of its 'toxicity' output (a sigmoid, as Detoxify.predict): the checkpoint
    ({'config', 'state_dict'}, read with weights_only) gives the weights, the model class's config and tokenizer come
    from its model_type (a hub name such as bert-base-uncased, or a folder) or from huggingface_config_path."""
    from weights import read_weights
    transformers = quiet_transformers()
    path = detoxify_checkpoint(model, checkpoint)
    try:
        loaded = read_weights(path, 'a detoxify checkpoint')
    except ValueError as e:
        raise ClassifierError(str(e)) from None
    try:
        arch = loaded['config']['arch']['args']
        classes = [DETOXIFY_NAMES.get(c, c) for c in loaded['config']['dataset']['args']['classes']]
        state_dict = loaded['state_dict']
    except (KeyError, TypeError):
        raise ClassifierError(f"{path}: not a detoxify checkpoint (no config.arch, config.dataset or state_dict)") \
            from None
    source = huggingface_config_path or arch['model_type']
    config = transformers.AutoConfig.from_pretrained(source, num_labels=arch['num_classes'])
    config.id2label = dict(enumerate(classes))
    config.label2id = {c: i for i, c in enumerate(classes)}
    config.problem_type = 'multi_label_classification'
    tokenizer = transformers.AutoTokenizer.from_pretrained(source)
    return build(config, state_dict, tokenizer, 'toxicity', device, dtype)
