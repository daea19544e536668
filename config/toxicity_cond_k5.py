# toxicity, cond_k5: conditional training with K = 5 graded control tokens (transforms.grade_edges): <|aligned|> for
# segments scored <= cond_threshold, then the misaligned ones in four bins by quantile, <|misaligned|> the worst.
# The paper's settings (reference §4); the budget and batch as config/toxicity_mle.py.
task = 'toxicity'
method = 'cond'
out_dir = 'out/toxicity_cond_k5'
eval_samples = 4096  # every eval_interval steps, as the original
cond_bins = 5
