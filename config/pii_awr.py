# pii, awr: advantage-weighted regression with a value head.
# The paper's settings (reference §4); the budget and batch as config/pii_mle.py.
task = 'pii'
method = 'awr'
out_dir = 'out/pii_awr'
eval_samples = 4096  # every eval_interval steps, as the original
awr_alpha = 0.5
awr_beta = 0.1
