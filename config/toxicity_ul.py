# toxicity, ul: unlikelihood on segments scored above ul_threshold (data.TASKS).
# The paper's settings (reference §4); the budget and batch as config/toxicity_mle.py.
task = 'toxicity'
method = 'ul'
out_dir = 'out/toxicity_ul'
eval_samples = 4096  # every eval_interval steps, as the original
ul_alpha = 1.0
