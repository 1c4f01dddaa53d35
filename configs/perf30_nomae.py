"""``perf30.py`` without Audio-MAE pre-training (the ablation): the separator starts from
random weights; everything else is the same.

  python -m trackformer_jax.main --config=configs/perf30_nomae.py [--config.data=musdb:PATH]
"""

from configs import perf


def get_config():
  return perf.get_config("30,nomae")
