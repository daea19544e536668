# Finetuning with feedback (paper §5): apply after a method's config, e.g.
#   python train.py config/toxicity_cond.py config/toxicity_finetune.py
# Starts from the MLE run's midpoint checkpoint (kept by config/toxicity_mle.py at step 25354) and continues the data
# order where that run stopped, for the remaining ~1.65B tokens.
# Per-method settings of the original's finetuning runs (reference §4), set them after this file:
#   mle, filter, ul: --total_batch_size=64 --learning_rate=5e-4;  rwr: --total_batch_size=512 --learning_rate=5e-4;
#   awr: --total_batch_size=512 --learning_rate=1e-3;  cond: as pretraining (the original had no file for it).
init_from = 'out/toxicity_mle/ckpt_step25354.pt'
skip_tokens = 1_661_599_744  # = 25354 steps × 65,536 tokens
max_tokens = 3_300_000_000 - 1_661_599_744
learning_rate = 5e-4
