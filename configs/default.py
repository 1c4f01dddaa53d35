"""Default hyper-parameters: the seed's recipe (Performer separator, MixIT, 44.1 kHz mono).

Every experiment file imports this and overrides a few fields; any field can also be set
on the command line, e.g. ``--config.batch_size=8``. The seed is the work this project
reproduces (docs/history.md).
"""

import ml_collections


def get_model_config() -> ml_collections.ConfigDict:
  """The separator's fields; ``name`` picks the model from the registry."""
  m = ml_collections.ConfigDict()
  m.name = "performer"  # performer | convtasnet | dense_transformer
  m.num_outputs = 8  # N soft masks / estimated sources
  m.mixture_consistency = True  # outputs sum exactly to the input
  m.mask_activation = "sigmoid"  # sigmoid | softmax (across outputs)
  # Front end of the Performer / dense separators.
  m.frontend = "stft"  # stft | learned
  m.n_fft = 1024  # STFT Hann window length (samples)
  m.hop = 256  # STFT hop (samples)
  m.encoder_filters = 512  # learned front end: number of basis filters
  m.encoder_window = 16  # learned front end: window (samples)
  m.encoder_stride = 8  # learned front end: stride (samples)
  # Transformer body.
  m.d_model = 256
  m.num_layers = 12
  m.num_heads = 8
  m.mlp_dim = 1024
  m.num_features = 256  # FAVOR+ random features per head
  m.feature_seed = 0  # FAVOR+ features are drawn from this seed per layer (not parameters)
  m.pos_conv_kernel = 31  # depthwise conv positional encoding, in frames (relative, any length)
  m.dropout_rate = 0.1
  m.remat = True  # per-layer rematerialisation (nn.scan + checkpoint)
  m.dtype = "float32"  # compute dtype: float32 | bfloat16 (parameters stay float32)
  # Conv-TasNet (Luo & Mesgarani 2019) hyper-parameters, the paper's names.
  m.tasnet_N = 512
  m.tasnet_L = 16
  m.tasnet_B = 128
  m.tasnet_H = 512
  m.tasnet_Sc = 128
  m.tasnet_P = 3
  m.tasnet_X = 8
  m.tasnet_R = 3
  m.tasnet_norm = "gLN"  # gLN (paper, global statistics) | fLN (per-frame, strictly local)
  return m


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.task = "mixit"  # mixit | mae
  config.model = get_model_config()

  # Data: one string, same syntax as evaluate's --data.
  #   bundled | bundled:PATH | chorales | chorales:PATH | musdb:PATH | moisesdb:PATH | folder:PATH
  config.data = "bundled"
  config.sample_rate_hz = 44100
  config.channels = 1
  config.segment_seconds = 3.0
  config.silence_threshold_db = -50.0  # crops quieter than this (RMS, dBFS) are redrawn
  config.strict_data = False  # True: a bad track is an error before training starts
  # True: training reads copies of the files resampled once to sample_rate_hz, not each crop
  # resampled as it is read (data/resampled.py).
  config.resampled_copies = False
  config.augment = ml_collections.ConfigDict(
    dict(gain_db=(-6.0, 3.0), channel_swap=True, polarity=True, remix_stems=False, stem_dropout=0.0)
  )

  # Loss.
  config.snr_max_db = 30.0
  config.diversity_weight = 0.1
  config.sparsity_weight = 0.01
  config.sparsity_kind = "rms_ratio"  # rms_ratio (the seed's) | entropy

  # Optimisation: AdamW, warm-up then cosine 1e-4 -> 1e-5.
  config.batch_size = 4
  config.learning_rate = 1e-4
  config.end_learning_rate = 1e-5
  config.warmup_steps = 1000
  config.weight_decay = 0.01
  config.grad_clip_norm = 5.0
  # Exponential moving average of the weights, evaluated and served instead of the raw ones
  # (0: none kept). Each step: ema = d·ema + (1 - d)·params, d ramped up over the first steps.
  config.ema_decay = 0.0
  config.num_train_steps = 200_000
  config.max_consecutive_nonfinite = 20  # a run of skipped steps stops training

  # Bookkeeping.
  config.log_every_steps = 100
  config.eval_every_steps = 5000
  config.num_eval_examples = 64
  config.checkpoint_every_steps = 5000
  config.keep_checkpoints = 3
  config.seed = 0

  # Audio-MAE.
  # A workdir to start from: an Audio-MAE pre-training run (its encoder) or a separator run
  # of the same model (every parameter: fine-tuning, e.g. runs/quick on one's own folder).
  config.init_from = ""
  config.mae = ml_collections.ConfigDict(dict(mask_ratio=0.3, span_frames=4, decoder_layers=2))
  return config
