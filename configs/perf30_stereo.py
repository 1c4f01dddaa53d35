"""``perf30.py`` in stereo: the same recipe on 30 s segments with both channels separated,
from an encoder pre-trained in stereo (``runs/mae_pretrain_stereo``).

  python -m trackformer_jax.main --config=configs/perf30_stereo.py
"""

from configs import perf


def get_config():
  return perf.get_config("30,stereo")
