# pii, mle: plain maximum likelihood.
# The paper's run (reference §4): GPT-2 small from scratch, with TrainConfig's batch and budget: 64 sequences ×
# 1024 tokens = 65,536 tokens per step (16 per micro-batch and GPU, accumulation makes up the rest), 3.3e9 tokens =
# 50,354 steps. The other pii configs differ from this one where they say.
task = 'pii'
method = 'mle'
out_dir = 'out/pii_mle'
eval_samples = 4096  # every eval_interval steps, as the original
keep_ckpt_steps = '25177'  # the midpoint checkpoint that the finetuning runs start from
