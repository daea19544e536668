# pep8, cond_k5: conditional training with K = 5 graded control tokens (transforms.grade_edges): <|aligned|> for
# segments scored <= cond_threshold, then the misaligned ones in four bins by quantile, <|misaligned|> the worst.
# GPT-2 small from scratch on codeparrot Python; GPT-2 BPE with space-run tokens (the original: codeparrot's tokenizer).
# 64 sequences × 1024 tokens = 65,536 tokens per step; 3.3e9 tokens = 50,354 steps.
task = 'pep8'
method = 'cond'
out_dir = 'out/pep8_cond_k5'
total_batch_size = 64
batch_size = 16  # per GPU; accumulation makes up the rest
learning_rate = 8e-4
max_tokens = 3_300_000_000
eval_samples = 4096  # every eval_interval steps, as the original
cond_bins = 5
