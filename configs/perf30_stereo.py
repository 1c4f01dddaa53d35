"""``perf30.py`` in stereo: the same recipe on 30 s segments with both channels separated.

python -m trackformer_jax.main --config=configs/perf30_stereo.py
"""

from configs import perf30


def get_config():
  config = perf30.get_config()
  config.channels = 2
  return config
