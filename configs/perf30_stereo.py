"""``perf30.py`` in stereo: the same recipe on 30 s segments with both channels separated.

python -m trackformer_jax.main --config=configs/perf30_stereo.py

Its Audio-MAE encoder must be pre-trained in stereo too (the STFT tokens hold both channels):
``python -m trackformer_jax.main --config=configs/mae_pretrain.py:stereo
--workdir=runs/mae_pretrain_stereo`` first.
"""

from configs import perf30


def get_config():
  config = perf30.get_config()
  config.channels = 2
  config.init_from = "runs/mae_pretrain_stereo"
  return config
