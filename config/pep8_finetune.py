# Finetuning with feedback (paper §5): apply after a method's config, e.g.
#   python train.py config/pep8_cond.py config/pep8_finetune.py
# Starts from the MLE run's midpoint checkpoint (kept by config/pep8_mle.py at step 25177) and continues the data
# order where that run stopped, for the remaining ~1.65B tokens.
# The original used batch 64 and lr 5e-4 for every method (reference §4).
init_from = 'out/pep8_mle/ckpt_step25177.pt'
skip_tokens = 1_649_999_872  # = 25177 steps × 65,536 tokens
max_tokens = 3_300_000_000 - 1_649_999_872
total_batch_size = 64
learning_rate = 5e-4
