# pep8, mle: plain maximum likelihood, on codeparrot's Python in GPT-2's BPE with space-run tokens (the original used
# codeparrot's tokenizer).
# The paper's run (reference §4): GPT-2 small from scratch, with TrainConfig's batch and budget: 64 sequences ×
# 1024 tokens = 65,536 tokens per step (16 per micro-batch and GPU, accumulation makes up the rest), 3.3e9 tokens =
# 50,354 steps. The other pep8 configs differ from this one where they say.
task = 'pep8'
method = 'mle'
out_dir = 'out/pep8_mle'
learning_rate = 8e-4
eval_samples = 4096  # every eval_interval steps, as the original
keep_ckpt_steps = '25177'  # the midpoint checkpoint that the finetuning runs start from
