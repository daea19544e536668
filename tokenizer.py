"""
The tokenizer: tiktoken's GPT-2 BPE, plus tokens for runs of 2-25 spaces (as OpenAI's Codex tokenizer p50k_base added
to GPT-2's: GPT-2 spends one token per space of indentation; with the runs, Python code takes 0.63x the tokens), plus
the two control tokens (their ids: data.py). Text without a run of two or more spaces tokenizes exactly as with GPT-2.

    python tokenizer.py fetch    # make it work offline: the GPT-2 BPE from a PyPI sdist, when tiktoken cannot download it
"""
import hashlib
import os
import sys

from data import ALIGNED, EOS, MISALIGNED, SPACE_RUNS, VOCAB_SIZE, DataError, cache_dir, write_atomically

GPT2_BPE_SHA256 = '306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930'
WHISPER_SDIST = 'openai-whisper==20250625'  # a PyPI sdist that ships the GPT-2 BPE as whisper/assets/gpt2.tiktoken
_tokenizer = None  # built once per process


def bpe_path():
    """Where we look for a local copy of the GPT-2 BPE: $PHF_GPT2_BPE, else ~/.cache/phf/gpt2.tiktoken."""
    return os.environ.get('PHF_GPT2_BPE', cache_dir('gpt2.tiktoken'))


def get_tokenizer():
    """GPT-2's BPE with the space runs (SPACE_RUNS), <|aligned|> = 50257 and <|misaligned|> = 50258. The BPE comes
    from the file $PHF_GPT2_BPE names (no download is tried: on a machine without network one can hang), else from
    tiktoken's own 'gpt2' (its cache, or a download), else from the local file at bpe_path()."""
    global _tokenizer
    if _tokenizer is not None:
        return _tokenizer
    import tiktoken
    from tiktoken_ext.openai_public import r50k_pat_str
    if 'PHF_GPT2_BPE' in os.environ:
        ranks = _local_bpe()
    else:
        try:
            ranks = tiktoken.get_encoding('gpt2')._mergeable_ranks
        except Exception:
            ranks = _local_bpe()
    # ranks ascending with length: BPE merges a run pairwise up to one token (runs over 25 split into several)
    ranks = {**ranks, **{b' ' * n: i for n, i in SPACE_RUNS.items()}}
    _tokenizer = tiktoken.Encoding(name='gpt2_phf', pat_str=r50k_pat_str, mergeable_ranks=ranks,
                                   special_tokens={'<|endoftext|>': EOS, '<|aligned|>': ALIGNED,
                                                   '<|misaligned|>': MISALIGNED})
    return _tokenizer


def _local_bpe():
    from tiktoken.load import load_tiktoken_bpe
    path = bpe_path()
    if not os.path.exists(path):
        raise DataError(f"GPT-2 BPE not found: {path} does not exist (and tiktoken cannot download it unless "
                        f"PHF_GPT2_BPE is unset); run `python tokenizer.py fetch` (needs PyPI) or set "
                        f"PHF_GPT2_BPE to a gpt2.tiktoken")
    try:
        return load_tiktoken_bpe(path, expected_hash=GPT2_BPE_SHA256)
    except ValueError:
        raise DataError(f"{path}: not the GPT-2 BPE (sha256 mismatch); delete it and run "
                        f"`python tokenizer.py fetch`") from None


def decode(tokens):
    """The text of token ids, without <|endoftext|> and the control tokens."""
    return get_tokenizer().decode([t for t in tokens if t not in (EOS, ALIGNED, MISALIGNED) and t < VOCAB_SIZE])


def fetch_tokenizer():
    """Make get_tokenizer() work offline: if tiktoken cannot get the BPE itself, take it from the whisper sdist on
    PyPI (the same file tiktoken downloads, sha256 checked) into bpe_path(). Does nothing when the tokenizer
    already loads."""
    try:
        get_tokenizer()
        return
    except DataError:
        pass
    import subprocess
    import tarfile
    import tempfile
    path = bpe_path()
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, '-m', 'pip', 'download', '--no-deps', '-q',
                        '-d', tmp, WHISPER_SDIST], check=True)
        sdist = os.path.join(tmp, os.listdir(tmp)[0])
        with tarfile.open(sdist) as tar:
            member = next(m for m in tar.getmembers() if m.name.endswith('whisper/assets/gpt2.tiktoken'))
            content = tar.extractfile(member).read()
    if hashlib.sha256(content).hexdigest() != GPT2_BPE_SHA256:
        raise DataError(f"{sdist}: gpt2.tiktoken has an unexpected sha256; not installing it")
    write_atomically(path, content)
    get_tokenizer()
    print(f"GPT-2 BPE installed at {path}")


if __name__ == '__main__':
    if sys.argv[1:] != ['fetch']:
        sys.exit("usage: python tokenizer.py fetch")
    fetch_tokenizer()
    enc = get_tokenizer()
    assert enc.encode('Hello world') == [15496, 995]
    print('tokenizer OK:', enc.encode('<|aligned|>Hello world', allowed_special='all'))
