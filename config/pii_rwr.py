# pii, rwr: reward-weighted regression = AWR with awr_alpha 1 (the value head stays at -0.5).
# The paper's settings (reference §4); the budget and batch as config/pii_mle.py.
task = 'pii'
method = 'rwr'
out_dir = 'out/pii_rwr'
eval_samples = 4096  # every eval_interval steps, as the original
awr_beta = 10.0
