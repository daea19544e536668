# pep8, rwr: reward-weighted regression = AWR with awr_alpha 1 (the value head stays at -0.5).
# The paper's settings (reference §4); the budget and batch as config/pep8_mle.py.
task = 'pep8'
method = 'rwr'
out_dir = 'out/pep8_rwr'
learning_rate = 1e-3
eval_samples = 4096  # every eval_interval steps, as the original
awr_beta = 10.0
