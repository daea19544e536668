# pep8, awr: advantage-weighted regression with a value head.
# The paper's settings (reference §4): 256 sequences × 1024 tokens = 262,144 tokens per step;
# 3.3e9 tokens = 12,588 steps.
task = 'pep8'
method = 'awr'
out_dir = 'out/pep8_awr'
total_batch_size = 256
learning_rate = 1e-3
eval_samples = 4096  # every eval_interval steps, as the original
awr_alpha = 0.05
awr_beta = 1.0
eval_interval = 64
