"""The seed's recipe (``perf.py``) on 5 s segments, from the Audio-MAE encoder.

  python -m trackformer_jax.main --config=configs/perf5.py [--config.data=musdb:PATH]

The ablation without pre-training: ``perf5_nomae.py``.
"""

from configs import perf


def get_config():
  return perf.get_config("5")
