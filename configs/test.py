"""Tiny sizes for tests: 8 kHz, 0.5 s segments, a 2-layer Performer of width 32.

python -m trackformer_jax.models --config configs/test.py
"""

from configs import default


def get_config():
  config = default.get_config()
  config.sample_rate_hz = 8000
  config.segment_seconds = 0.5
  m = config.model
  m.n_fft = 256
  m.hop = 64
  m.encoder_filters = 32
  m.d_model = 32
  m.num_layers = 2
  m.num_heads = 2
  m.mlp_dim = 64
  m.num_features = 16
  m.pos_conv_kernel = 5
  m.tasnet_N = 32
  m.tasnet_B = 16
  m.tasnet_H = 32
  m.tasnet_Sc = 16
  m.tasnet_X = 3
  m.tasnet_R = 2
  # Training fields for tests/training/test_loop.py: a short schedule with a brisk learning rate, so
  # that 20 steps measurably lower the loss; few eval examples; frequent bookkeeping.
  config.batch_size = 4
  config.num_train_steps = 20
  config.warmup_steps = 2
  config.learning_rate = 1e-3
  config.end_learning_rate = 1e-4
  config.num_eval_examples = 8
  config.log_every_steps = 5
  config.eval_every_steps = 10
  config.checkpoint_every_steps = 10
  return config
