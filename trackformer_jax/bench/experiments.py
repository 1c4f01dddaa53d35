"""The experiment configs the suites measure, loaded by file name from ``configs/``."""

import ml_collections

from trackformer_jax.training import config_files

REDUCED_SAMPLE_RATE_HZ = 8000


def load_config(name: str) -> ml_collections.ConfigDict:
  """``configs/<name>.py``'s ``get_config()``; ``dense<S>`` is ``perf<S>`` with exact attention.

  There is no config file for the dense-attention control: it is the Performer recipe with
  only the attention swapped, which is exactly what a comparison of the two should hold fixed.
  """
  if name.startswith("dense"):
    config = load_config("perf" + name[len("dense") :])
    config.model.name = "dense_transformer"
    return config
  return config_files.load_config(name)


def sized_config(name: str, segment_seconds: float | None = None) -> ml_collections.ConfigDict:
  """``load_config(name)``, optionally at another segment length (perf60 = perf30 at 60 s)."""
  config = load_config(name)
  if segment_seconds is not None:
    config.segment_seconds = float(segment_seconds)
  return config


def smoke_config(model_name: str, segment_seconds: float) -> ml_collections.ConfigDict:
  """``configs/test.py`` (8 kHz, width 32) made cheaper still to compile, for ``--smoke``.

  One transformer layer without rematerialisation and a single Conv-TasNet block: every
  smoke suite compiles a training step, and compiling is what a smoke run spends its time on.
  """
  config = load_config("test")
  config.model.name = model_name
  config.model.num_layers = 1
  config.model.remat = False
  config.model.tasnet_X = config.model.tasnet_R = 1
  config.segment_seconds = float(segment_seconds)
  return config


def reduced_config(
  model_name: str, segment_seconds: float, smoke: bool
) -> ml_collections.ConfigDict:
  """The recipe at a quarter of every width and depth, 8 kHz mono: what a CPU can train.

  Performer: 3 layers of width 64, 2 heads of 32, MLP 256, 64 random features, STFT 256/64
  (32 ms windows at 8 kHz; the recipe's are 23 ms at 44.1 kHz). Conv-TasNet: N = H = 128,
  B = Sc = 32, 2 repeats of 3 blocks. Batch 4, AdamW 1e-3 after a 20-step warm-up, the cosine
  stretched over 10^6 steps so that it is flat over minutes of training.

  ``smoke`` uses ``configs/test.py``'s tiny widths instead.
  """
  if smoke:
    # Exactly the other smoke suites' config, so the compiled step is shared with them.
    return smoke_config(model_name, segment_seconds)
  else:
    config = load_config("default")
    config.sample_rate_hz = REDUCED_SAMPLE_RATE_HZ
    m = config.model
    m.n_fft, m.hop = 256, 64  # 32 ms windows at 8 kHz (the recipe: 23 ms at 44.1 kHz)
    m.d_model, m.num_layers, m.num_heads, m.mlp_dim, m.num_features = 64, 3, 2, 256, 64
    m.tasnet_N, m.tasnet_B, m.tasnet_H, m.tasnet_Sc, m.tasnet_X, m.tasnet_R = 128, 32, 128, 32, 3, 2
    m.dropout_rate = 0.0  # minutes of training cannot overfit; dropout would only slow them
    m.remat = False  # memory is plentiful at this size; recomputation only costs time
  config.model.name = model_name
  config.channels = 1
  config.segment_seconds = float(segment_seconds)
  config.batch_size = 4
  config.learning_rate = 1e-3
  config.end_learning_rate = 1e-4
  config.warmup_steps = 20
  config.num_train_steps = 1_000_000
  config.init_from = ""
  return config
