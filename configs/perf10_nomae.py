"""``perf10.py`` without Audio-MAE pre-training (the ablation): the separator starts from
random weights; everything else is the same.

  python -m trackformer_jax.main --config=configs/perf10_nomae.py [--config.data=musdb:PATH]
"""

from configs import perf10


def get_config():
  config = perf10.get_config()
  config.init_from = ""
  return config
