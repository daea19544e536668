"""Shared fixtures: tiny prepared datasets and a tiny training config, built in tmp_path (no download), a hub cache,
and a loopback HTTP server for the OpenAI-compatible endpoints."""
import http.server
import json
import os
import sys
import threading

import numpy as np
import pytest

ROOT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT_DIR)
os.environ.setdefault('OMP_NUM_THREADS', '1')  # deterministic and fast on the 2-core CI machine

import data  # noqa: E402


def make_dataset(root, task='pep8', n_docs=40, seed=0, vocab=500):
    """Random documents of 1-6 segments of 1-12 tokens, a third of the segments scored 0 (aligned)."""
    rng = np.random.default_rng(seed)
    for split, n in (('train', n_docs), ('val', max(4, n_docs // 4))):
        with data.DatasetWriter(os.path.join(root, task, split), task=task, split=split, source='random') as w:
            for _ in range(n):
                k = int(rng.integers(1, 7))
                segments = [rng.integers(0, vocab, int(rng.integers(1, 13))).tolist() for _ in range(k)]
                scores = np.where(rng.random(k) < 1 / 3, 0.0, rng.random(k) * 0.1).tolist()
                w.add_document(segments, scores)
    return root


@pytest.fixture
def tiny_data(tmp_path):
    return make_dataset(str(tmp_path / 'data'))


def tiny_args(data_dir, out_dir, **overrides):
    """--key=value arguments for a seconds-long CPU run of train.py."""
    args = dict(task='pep8', data_dir=data_dir, out_dir=out_dir, n_layer=2, n_head=2, n_embd=32, block_size=32,
                batch_size=2, total_batch_size=4, max_tokens=8 * 4 * 32, learning_rate=1e-3, compile=False,
                device='cpu', dtype='float32', log_interval=1, ckpt_interval=4, eval_interval=0, eval_iters=0,
                eval_batch_size=2, eval_samples=0, kl_reference='')  # float32 on every CPU: the same numbers
    args.update(overrides)
    return [f"--{k}={v}" for k, v in args.items()]


def start_training(data_dir, out_dir, log_lines, stderr=None, **overrides):
    """train.py in a child process on the tiny config, returned once out_dir/log.jsonl holds log_lines records (or
    the child ended), for tests that signal or kill a run part way. Its stdout is a pipe of 4 KiB that nobody reads
    until the caller drains it (proc.communicate()): after about 70 step lines the child blocks on its next one, so
    however slow this process is to send its signal, the run cannot have finished (give it more steps than that)."""
    import fcntl
    import subprocess
    import time
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, 4096)
    proc = subprocess.Popen([sys.executable, 'train.py'] + tiny_args(data_dir, out_dir, **overrides), cwd=ROOT_DIR,
                            stdout=write_end, stderr=stderr or subprocess.DEVNULL, text=True)
    os.close(write_end)
    proc.stdout = os.fdopen(read_end)
    log = os.path.join(out_dir, 'log.jsonl')
    deadline = time.time() + 120  # a safety net for a child that hangs; never reached by a run that works
    while time.time() < deadline and proc.poll() is None:
        if os.path.exists(log) and len(open(log).readlines()) >= log_lines:
            break
        time.sleep(0.005)
    return proc


CLASSIFIER_WORDS = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]', 'you', 'are', 'an', 'idiot', 'have', 'a', 'nice',
                    'day', '.', 'hello', 'world']


def tiny_classifier(folder, labels=('ok', 'rude', 'spam'), problem_type=None, seed=0):
    """A random-weight BERT sequence classifier saved as a Hugging Face model folder (config.json with the labels,
    tokenizer files, model.safetensors), 32 tokens at most: what prepare.py --scorer=hf:FOLDER reads. Returns the
    transformers model (eval mode) and its tokenizer."""
    import torch
    import transformers
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, 'vocab.txt'), 'w') as f:
        f.write('\n'.join(CLASSIFIER_WORDS) + '\n')
    config = transformers.BertConfig(vocab_size=len(CLASSIFIER_WORDS), hidden_size=16, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=32, max_position_embeddings=32,
                                     initializer_range=0.5, num_labels=len(labels), problem_type=problem_type,
                                     id2label=dict(enumerate(labels)), label2id={k: i for i, k in enumerate(labels)})
    tokenizer = transformers.BertTokenizer(os.path.join(folder, 'vocab.txt'), model_max_length=32)
    tokenizer.save_pretrained(folder)
    torch.manual_seed(seed)
    model = transformers.BertForSequenceClassification(config).eval()
    model.save_pretrained(folder)
    return model, tokenizer


HUB_COMMIT = '5a1e' * 10  # the commit a cached snapshot is of


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """The Hugging Face hub client's cache in tmp_path/hf/hub (HF_HOME=tmp_path/hf), offline. put(repo, path, bytes)
    stores a dataset file as a download leaves it: the content in blobs/, snapshots/COMMIT/path linking to it, and
    refs/main naming COMMIT, so that the hub client's own functions resolve it."""
    import hashlib

    import huggingface_hub.constants
    cache = tmp_path / 'hf' / 'hub'
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_CACHE', str(cache))
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', True)

    def put(repo, path, content):
        storage = cache / f"datasets--{repo.replace('/', '--')}"
        blob = storage / 'blobs' / hashlib.sha256(content).hexdigest()
        link = storage / 'snapshots' / HUB_COMMIT / path
        for folder in (blob.parent, link.parent, storage / 'refs'):
            folder.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(content)
        link.symlink_to(os.path.relpath(blob, link.parent))
        (storage / 'refs' / 'main').write_text(HUB_COMMIT)
        return str(link)
    return put


class JSONHandler(http.server.BaseHTTPRequestHandler):
    """A loopback endpoint: subclasses define do_POST, read the request with self.body() and answer with
    self.reply(status, obj). The retry-after-ms header asks an OpenAI client to wait 1 ms before retrying."""

    def body(self):
        return json.loads(self.rfile.read(int(self.headers['Content-Length'])))

    def reply(self, status, obj):
        payload = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header('Content-Type', 'application/json')
        self.send_header('Content-Length', str(len(payload)))
        self.send_header('retry-after-ms', '1')
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


def serve(handler, monkeypatch, **state):
    """A threaded server of handler on a free loopback port, with state as its attributes (the handler reads them as
    self.server.x) and requests = []; srv.url is its /v1 base URL. Yields it, then shuts it down."""
    monkeypatch.setenv('NO_PROXY', '127.0.0.1')
    srv = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    srv.requests = []
    for key, value in state.items():
        setattr(srv, key, value)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    srv.url = f'http://127.0.0.1:{srv.server_address[1]}/v1'
    yield srv
    srv.shutdown()
    srv.server_close()
