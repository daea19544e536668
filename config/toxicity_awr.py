# toxicity, awr: advantage-weighted regression with a value head.
# The paper's settings (reference §4): 1024 sequences × 1024 tokens = 1,048,576 tokens per step;
# 3.3e9 tokens = 3,147 steps.
task = 'toxicity'
method = 'awr'
out_dir = 'out/toxicity_awr'
total_batch_size = 1024
learning_rate = 1e-3
eval_samples = 4096  # every eval_interval steps, as the original
awr_alpha = 0.5
awr_beta = 10.0
eval_interval = 16
