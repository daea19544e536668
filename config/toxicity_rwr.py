# toxicity, rwr: reward-weighted regression = AWR with awr_alpha 1 (the value head stays at -0.5).
# GPT-2 small from scratch on tomekkorbak/pile-detoxify (reference §4).
# 1024 sequences × 1024 tokens = 1,048,576 tokens per step; 3.3e9 tokens = 3,147 steps.
task = 'toxicity'
method = 'rwr'
out_dir = 'out/toxicity_rwr'
total_batch_size = 1024
batch_size = 16  # per GPU; accumulation makes up the rest
learning_rate = 5e-4
max_tokens = 3_300_000_000
eval_samples = 4096  # every eval_interval steps, as the original
awr_beta = 10.0
eval_interval = 16
