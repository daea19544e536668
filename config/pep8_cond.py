# pep8, cond: MLE on text with <|aligned|>/<|misaligned|> before each segment; thresholds from data.TASKS.
# The paper's settings (reference §4); the budget and batch as config/pep8_mle.py.
task = 'pep8'
method = 'cond'
out_dir = 'out/pep8_cond'
learning_rate = 8e-4
eval_samples = 4096  # every eval_interval steps, as the original
