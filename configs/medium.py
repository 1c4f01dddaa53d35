"""A longer CPU recipe: about two hours of training on 2 cores (1.2 steps/s measured).

quick.py widened and deepened (6 layers of width 192 instead of 4 of 128), on 3 s segments,
trained 8,000 steps instead of 3,000, with a moving average of the weights. Same corpus
(``bundled``), same 16 kHz mono STFT front end, so its outputs are scored exactly as the
quickstart's.

  python -m trackformer_jax.main --config=configs/medium.py   # -> runs/medium
"""

from configs import quick


def get_config():
  config = quick.get_config()
  config.segment_seconds = 3.0

  model = config.model
  model.d_model = 192
  model.num_layers = 6
  model.num_heads = 6
  model.mlp_dim = 512
  model.num_features = 64

  config.batch_size = 8
  config.learning_rate = 7e-4
  config.end_learning_rate = 1e-5
  config.warmup_steps = 300
  config.num_train_steps = 8_000
  config.ema_decay = 0.999

  config.log_every_steps = 100
  config.eval_every_steps = 2000
  config.checkpoint_every_steps = 1000
  config.num_eval_examples = 64
  return config
