"""The seed's recipe (``perf.py``) on 30 s segments, from the Audio-MAE encoder.

  python -m trackformer_jax.main --config=configs/perf30.py [--config.data=musdb:PATH]

The ablation without pre-training: ``perf30_nomae.py``.
"""

from configs import perf


def get_config():
  return perf.get_config("30")
