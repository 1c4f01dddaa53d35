"""Audio-MAE pre-training of the Performer encoder (``task = "mae"``), before MixIT.

The separator's model fields are ``default.py``'s (the perf configs' sizes), so the encoder
this trains loads into ``perf3/5/10/30.py`` (whose ``init_from`` is ``runs/mae_pretrain``).
30 % of the frames are masked in spans of 4; a 2-layer Performer decoder reconstructs their
normalised log-magnitude spectra. Mixtures only: stems are never read.

  python -m trackformer_jax.main --config=configs/mae_pretrain.py   # -> runs/mae_pretrain

The perf configs run this same pre-training themselves when ``runs/mae_pretrain`` has no
finished run (their ``config.pretrain``), so this command is only needed on its own.

``get_config(arg)`` switches (``--config=configs/mae_pretrain.py:quick``):
  quick   ``quick.py``'s sizes (16 kHz, 2 s, 4 layers of width 128) for the quick ablation;
          pass ``--workdir`` and point ``quick.py``'s ``--config.init_from`` at it.
  stereo  two channels, for ``perf30_stereo.py`` (``--workdir=runs/mae_pretrain_stereo``).
"""

from configs import default, quick


def get_config(arg: str | None = None):
  if arg not in (None, "", "quick", "stereo"):
    raise ValueError(f"configs/mae_pretrain.py: unknown switch {arg!r}; expected quick or stereo")
  config = quick.get_config() if arg == "quick" else default.get_config()
  config.task = "mae"
  config.init_from = ""
  config.mae.mask_ratio = 0.3
  config.mae.span_frames = 4
  config.mae.decoder_layers = 2
  if arg != "quick":
    config.segment_seconds = 3.0
    # No tuned budget yet: half of MixIT's, evaluated (and the best kept) as often.
    config.num_train_steps = 100_000
  if arg == "stereo":
    config.channels = 2
  return config
