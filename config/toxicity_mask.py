# toxicity, mask: token-level masking, MLE on the tokens of segments scored <= cond_threshold only (data.TASKS).
# The paper's settings (reference §4); the budget and batch as config/toxicity_mle.py.
task = 'toxicity'
method = 'mask'
out_dir = 'out/toxicity_mask'
eval_samples = 4096  # every eval_interval steps, as the original
