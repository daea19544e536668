# toxicity, cond: MLE on text with <|aligned|>/<|misaligned|> before each segment; thresholds from data.TASKS.
# The paper's settings (reference §4); the budget and batch as config/toxicity_mle.py.
task = 'toxicity'
method = 'cond'
out_dir = 'out/toxicity_cond'
eval_samples = 4096  # every eval_interval steps, as the original
