# Finetuning with feedback (paper §5): apply after a method's config, e.g.
#   python train.py config/pii_cond.py config/pii_finetune.py
# Starts from the MLE run's midpoint checkpoint (kept by config/pii_mle.py at step 25177) and continues the data
# order where that run stopped, for the remaining ~1.65B tokens.
# Per-method settings of the original (reference §4): mle, filter, cond, ul: batch 128, lr 1e-4 (below);
#   rwr, awr: --total_batch_size=512.
init_from = 'out/pii_mle/ckpt_step25177.pt'
skip_tokens = 1_649_999_872  # = 25177 steps × 65,536 tokens
max_tokens = 3_300_000_000 - 1_649_999_872
total_batch_size = 128
learning_rate = 1e-4
