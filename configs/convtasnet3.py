"""The Conv-TasNet baseline (``convtasnet.py``) on 3 s segments, beside ``perf3.py``.

python -m trackformer_jax.main --config=configs/convtasnet3.py
"""

from configs import convtasnet


def get_config():
  return convtasnet.get_config("3")
