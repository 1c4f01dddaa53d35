"""The seed's recipe: Performer separator (12 layers, 256 random features per head, N = 8
masks), MixIT + diversity + sparsity, batch 4, AdamW (weight decay 0.01) with a short warm-up
and cosine decay 1e-4 -> 1e-5, mono at 44.1 kHz, started from an Audio-MAE encoder.

  python -m trackformer_jax.main --config=configs/perf.py:30 [--config.data=musdb:PATH]

``get_config(arg)``: the segment length in seconds, then optional switches, comma-separated
(``perf.py:30,stereo``):
  nomae   the ablation without pre-training: the separator starts from random weights.
  stereo  both channels separated; its encoder is pre-trained in stereo too (the STFT tokens
          hold both channels), in ``runs/mae_pretrain_stereo``.

Starts from the Audio-MAE encoder of ``runs/mae_pretrain`` (shared by every segment length),
which the same command pre-trains first when no finished run is there (``config.pretrain``:
``mae_pretrain.py``'s run), then reuses.
``perf3/5/10/30.py``, ``perf*_nomae.py`` and ``perf30_stereo.py`` name these variants.
"""

import ml_collections

from configs import default

SWITCHES = ("nomae", "stereo")


def get_config(arg: str = "30"):
  seconds, *switches = [part.strip() for part in str(arg).split(",")]
  unknown = sorted(set(switches) - set(SWITCHES))
  if unknown or not seconds.replace(".", "", 1).isdigit():
    raise ValueError(
      f"configs/perf.py:{arg}: expected segment seconds then any of {', '.join(SWITCHES)}, "
      "e.g. perf.py:30,stereo"
    )
  config = default.get_config()
  config.model.name = "performer"
  config.segment_seconds = float(seconds)
  config.init_from = "runs/mae_pretrain"
  # How the encoder is pre-trained where init_from has no finished run (training.recipe):
  # this config with these fields, on 3 s segments for every segment length here, so that
  # one pre-training serves all four.
  config.pretrain = ml_collections.ConfigDict(dict(segment_seconds=3.0, num_train_steps=100_000))
  if "stereo" in switches:
    config.channels = 2
    config.init_from = "runs/mae_pretrain_stereo"
  if "nomae" in switches:
    config.init_from = ""
  return config
