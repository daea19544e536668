# pii, mask: token-level masking, MLE on the tokens of segments scored <= cond_threshold only (data.TASKS).
# The paper's settings (reference §4); the budget and batch as config/pii_mle.py.
task = 'pii'
method = 'mask'
out_dir = 'out/pii_mask'
eval_samples = 4096  # every eval_interval steps, as the original
