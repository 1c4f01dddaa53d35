"""The Conv-TasNet baseline (Luo & Mesgarani 2019; N = 8 outputs) with the seed's MixIT recipe
on 5 s segments: same losses, optimiser, schedule and data as ``perf5.py``.

  python -m trackformer_jax.main --config=configs/convtasnet5.py
"""

from configs import default


def get_config():
  config = default.get_config()
  config.model.name = "convtasnet"
  config.segment_seconds = 5.0
  return config
