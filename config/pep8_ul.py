# pep8, ul: unlikelihood on segments scored above ul_threshold (data.TASKS).
# The paper's settings (reference §4); the budget and batch as config/pep8_mle.py.
task = 'pep8'
method = 'ul'
out_dir = 'out/pep8_ul'
learning_rate = 8e-4
eval_samples = 4096  # every eval_interval steps, as the original
ul_alpha = 0.01  # ul_threshold 0 runs the soft branch, as the original did (ul_soft)
