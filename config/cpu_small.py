# A model and budget that train in a few minutes on a laptop CPU (on a GPU where there is one); apply after a method's
# config:
#   python train.py config/pep8_cond.py config/cpu_small.py --out_dir=out/small_pep8_cond
# 4 layers × 128 wide (0.8M parameters besides the 6.4M of the 50,304-row embedding, whose output layer is most of
# the compute); 8 × 128 = 1,024 tokens per step; 256K tokens = 250 steps.
n_layer = 4
n_head = 4
n_embd = 128
block_size = 128
batch_size = 8
total_batch_size = 8
max_tokens = 256_000
learning_rate = 2e-3
warmup_frac = 0.02
compile = False
log_interval = 25
ckpt_interval = 100
eval_interval = 0  # evaluate at the end only
eval_iters = 20
eval_batch_size = 8
eval_samples = 64
eval_max_new_tokens = 128
keep_ckpt_steps = ''
