# pii, ul: unlikelihood on segments scored above ul_threshold (data.TASKS).
# The paper's settings (reference §4); the budget and batch as config/pii_mle.py.
task = 'pii'
method = 'ul'
out_dir = 'out/pii_ul'
eval_samples = 4096  # every eval_interval steps, as the original
ul_alpha = 1.0  # ul_threshold 0 runs the soft branch, as the original did (ul_soft)
