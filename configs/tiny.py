"""Tiny variants for tests and smoke runs; each trains or compiles in seconds on a CPU.

``get_config(arg)`` (``--config=configs/tiny.py:recipe``):
  data     the tests' corpora's fields: ``default.py`` at 8 kHz mono on 0.5 s segments,
           batch 2, 4 evaluation examples (the model stays default's; input tests build none).
  mae      ``test.py`` as Audio-MAE pre-training (``task = "mae"``) cut down further: one
           encoder layer, one decoder layer, no dropout. ``mae,learned``: the learned front end.
  smoke    ``test.py`` made cheaper still to compile (one transformer layer without
           rematerialisation, one Conv-TasNet block): what the benchmarks' ``--smoke`` runs.
  recipe   ``test.py``'s MixIT from an Audio-MAE encoder the same command pre-trains first
           (20 steps into ``runs/tiny_pretrain``): the two-phase recipe of ``perf.py`` in small.
"""

import ml_collections

from configs import default, test

VARIANTS = ("data", "mae", "smoke", "recipe")


def get_config(arg: str = "data"):
  variant, *switches = [part.strip() for part in str(arg).split(",")]
  if (
    variant not in VARIANTS or switches not in ([], ["learned"]) or (switches and variant != "mae")
  ):
    raise ValueError(
      f"configs/tiny.py:{arg}: expected one of {', '.join(VARIANTS)} (mae takes ',learned')"
    )
  if variant == "data":
    config = default.get_config()
    config.sample_rate_hz = 8000
    config.channels = 1
    config.segment_seconds = 0.5
    config.batch_size = 2
    config.num_eval_examples = 4
    return config
  config = test.get_config()
  if variant == "mae":
    config.task = "mae"
    config.model.frontend = "learned" if switches else "stft"
    config.model.num_layers = 1
    config.model.dropout_rate = 0.0
    config.mae.decoder_layers = 1
  elif variant == "smoke":
    config.model.num_layers = 1
    config.model.remat = False
    config.model.tasnet_X = config.model.tasnet_R = 1
  else:
    config.init_from = "runs/tiny_pretrain"
    config.pretrain = ml_collections.ConfigDict(dict(num_train_steps=20))
  return config
