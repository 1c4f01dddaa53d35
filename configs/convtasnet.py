"""The Conv-TasNet baseline (Luo & Mesgarani 2019; N = 8 outputs) with the seed's MixIT recipe:
same losses, optimiser, schedule and data as ``perf.py`` at the same segment length (the
seed: the work this project reproduces, docs/history.md).

  python -m trackformer_jax.main --config=configs/convtasnet.py:30

``get_config(arg)``: the segment length in seconds (``convtasnet3/5/10/30.py`` name them).
"""

from configs import default


def get_config(arg: str = "30"):
  try:
    seconds = float(arg)
  except ValueError:
    raise ValueError(f"configs/convtasnet.py:{arg}: expected segment seconds, e.g. 30") from None
  config = default.get_config()
  config.model.name = "convtasnet"
  config.segment_seconds = seconds
  return config
