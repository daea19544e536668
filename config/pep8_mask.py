# pep8, mask: token-level masking, MLE on the tokens of segments scored <= cond_threshold only (data.TASKS).
# The paper's settings (reference §4); the budget and batch as config/pep8_mle.py.
task = 'pep8'
method = 'mask'
out_dir = 'out/pep8_mask'
learning_rate = 8e-4
eval_samples = 4096  # every eval_interval steps, as the original
