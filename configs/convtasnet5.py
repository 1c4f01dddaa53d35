"""The Conv-TasNet baseline (``convtasnet.py``) on 5 s segments, beside ``perf5.py``.

python -m trackformer_jax.main --config=configs/convtasnet5.py
"""

from configs import convtasnet


def get_config():
  return convtasnet.get_config("5")
