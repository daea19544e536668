# pii, cond_k5: conditional training with K = 5 graded control tokens (transforms.grade_edges): <|aligned|> for
# segments scored <= cond_threshold, then the misaligned ones in four bins by quantile, <|misaligned|> the worst.
# GPT-2 small from scratch on tomekkorbak/pile-pii-scrubadub (reference §4).
# 64 sequences × 1024 tokens = 65,536 tokens per step; 3.3e9 tokens = 50,354 steps.
task = 'pii'
method = 'cond'
out_dir = 'out/pii_cond_k5'
total_batch_size = 64
batch_size = 16  # per GPU; accumulation makes up the rest
learning_rate = 5e-4
max_tokens = 3_300_000_000
eval_samples = 4096  # every eval_interval steps, as the original
cond_bins = 5
