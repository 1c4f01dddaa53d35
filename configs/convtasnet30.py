"""The Conv-TasNet baseline (Luo & Mesgarani 2019; N = 8 outputs) with the seed's MixIT recipe
on 30 s segments: same losses, optimiser, schedule and data as ``perf30.py``.

  python -m trackformer_jax.main --config=configs/convtasnet30.py
"""

from configs import default


def get_config():
  config = default.get_config()
  config.model.name = "convtasnet"
  config.segment_seconds = 30.0
  return config
