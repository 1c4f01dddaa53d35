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
  return config
