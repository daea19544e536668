# pep8, awr: advantage-weighted regression with a value head.
# GPT-2 small from scratch on codeparrot Python; GPT-2 BPE with space-run tokens (the original: codeparrot's tokenizer).
# 256 sequences × 1024 tokens = 262,144 tokens per step; 3.3e9 tokens = 12,588 steps.
task = 'pep8'
method = 'awr'
out_dir = 'out/pep8_awr'
total_batch_size = 256
batch_size = 16  # per GPU; accumulation makes up the rest
learning_rate = 1e-3
max_tokens = 3_300_000_000
eval_samples = 4096  # every eval_interval steps, as the original
awr_alpha = 0.05
awr_beta = 1.0
eval_interval = 64
