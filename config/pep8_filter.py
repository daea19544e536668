# pep8, filter: MLE on the documents whose score <= filter_threshold (the task's, data.TASKS).
# The paper's settings (reference §4); the budget and batch as config/pep8_mle.py.
task = 'pep8'
method = 'filter'
out_dir = 'out/pep8_filter'
learning_rate = 8e-4
eval_samples = 4096  # every eval_interval steps, as the original
