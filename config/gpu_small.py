# A model and budget for one GPU (repro.py --size=gpu); apply after a method's config:
#   python train.py config/pep8_cond.py config/gpu_small.py --out_dir=out/gpu_pep8_cond
# 8 layers × 512 wide, T = 512; 64 × 512 = 32,768 tokens per step; 40M tokens = 1,220 steps.
n_layer = 8
n_head = 8
n_embd = 512
block_size = 512
batch_size = 64
total_batch_size = 64
max_tokens = 40_000_000
learning_rate = 1e-3
warmup_frac = 0.02
eval_interval = 400
eval_samples = 1024
kl_samples = 1024
eval_max_new_tokens = 256
ckpt_interval = 500
log_interval = 50
