# toxicity, mle: plain maximum likelihood.
# The paper's run (reference §4): GPT-2 small from scratch, with TrainConfig's batch and budget: 64 sequences ×
# 1024 tokens = 65,536 tokens per step (16 per micro-batch and GPU, accumulation makes up the rest), 3.3e9 tokens =
# 50,354 steps. The other toxicity configs differ from this one where they say.
task = 'toxicity'
method = 'mle'
out_dir = 'out/toxicity_mle'
eval_samples = 4096  # every eval_interval steps, as the original
# the checkpoint the finetuning runs start from: the original kept toxicity's at step 25,354 (its force_call_on),
# a little past the midpoint of 50,354 steps where PII's and PEP8's are (25,177), reference §4
keep_ckpt_steps = '25354'
