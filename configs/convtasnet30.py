"""The Conv-TasNet baseline (``convtasnet.py``) on 30 s segments, beside ``perf30.py``.

python -m trackformer_jax.main --config=configs/convtasnet30.py
"""

from configs import convtasnet


def get_config():
  return convtasnet.get_config("30")
