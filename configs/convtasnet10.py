"""The Conv-TasNet baseline (``convtasnet.py``) on 10 s segments, beside ``perf10.py``.

python -m trackformer_jax.main --config=configs/convtasnet10.py
"""

from configs import convtasnet


def get_config():
  return convtasnet.get_config("10")
