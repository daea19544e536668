# toxicity, filter: MLE on the documents whose score <= filter_threshold (the task's, data.TASKS).
# The paper's settings (reference §4); the budget and batch as config/toxicity_mle.py.
task = 'toxicity'
method = 'filter'
out_dir = 'out/toxicity_filter'
eval_samples = 4096  # every eval_interval steps, as the original
