"""The seed's recipe (``perf.py``) on 10 s segments, from the Audio-MAE encoder.

  python -m trackformer_jax.main --config=configs/perf10.py [--config.data=musdb:PATH]

The ablation without pre-training: ``perf10_nomae.py``.
"""

from configs import perf


def get_config():
  return perf.get_config("10")
