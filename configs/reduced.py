"""The recipe at a quarter of every width and depth, 8 kHz mono: what a CPU can train.

Performer: 3 layers of width 64, 2 heads of 32, MLP 256, 64 random features, STFT 256/64
(32 ms windows at 8 kHz; the recipe's are 23 ms at 44.1 kHz). Conv-TasNet: N = H = 128,
B = Sc = 32, 2 repeats of 3 blocks. Batch 4, AdamW 1e-3 after a 20-step warm-up, the cosine
stretched over 10^6 steps so that it is flat over minutes of training. The benchmarks'
seed tables train it (``bench.experiments.reduced_config`` picks the model and segment).

``get_config(arg)``: the model name (default ``performer``), e.g. ``reduced.py:convtasnet``.
"""

from configs import default


def get_config(arg: str = "performer"):
  config = default.get_config()
  config.sample_rate_hz = 8000
  m = config.model
  m.n_fft, m.hop = 256, 64  # 32 ms windows at 8 kHz (the recipe: 23 ms at 44.1 kHz)
  m.d_model, m.num_layers, m.num_heads, m.mlp_dim, m.num_features = 64, 3, 2, 256, 64
  m.tasnet_N, m.tasnet_B, m.tasnet_H, m.tasnet_Sc, m.tasnet_X, m.tasnet_R = 128, 32, 128, 32, 3, 2
  m.dropout_rate = 0.0  # minutes of training cannot overfit; dropout would only slow them
  m.remat = False  # memory is plentiful at this size; recomputation only costs time
  m.name = arg
  config.channels = 1
  config.segment_seconds = 3.0
  config.batch_size = 4
  config.learning_rate = 1e-3
  config.end_learning_rate = 1e-4
  config.warmup_steps = 20
  config.num_train_steps = 1_000_000
  config.init_from = ""
  return config
