"""Sized for a laptop CPU: about seventeen minutes of training on 2 cores learns clearly.

A small STFT-mask Performer (4 layers, d_model 128) at 16 kHz mono on 2 s segments, trained
on the bundled corpus (``data/bundled``: arranged songs in thirteen styles and chorales, built
on first use), its mixtures remixed stem by stem across songs, with stems left out. The
target: beat the same model untrained (the step-0 evaluation, its control) by at least 1.5 dB
stem SI-SNR improvement on every stem. This is what ``launch/quickstart.sh`` trains.

  python -m trackformer_jax.main --config=configs/quick.py   # -> runs/quick
"""

from configs import default


def get_config():
  config = default.get_config()
  config.data = "bundled"
  config.sample_rate_hz = 16000
  config.channels = 1
  config.segment_seconds = 2.0
  # Each mixture keeps one song's vocals and takes its bass, drums and other from three other
  # songs, so MixIT cannot win by telling song from song (docs/music.md: three seeds).
  config.augment.remix_stems = True
  # And each of a remixed mixture's stems is left out half the time (at least one stays), so
  # mixtures of mixtures hold two to eight stems: MixIT learns to split parts it hears alone
  # as well as dense mixes (docs/music.md: 0.3, 0.5, 0.75 on validation; three seeds).
  config.augment.stem_dropout = 0.5
  # Remixed mixtures read eight crops each: read copies at 16 kHz, not resample each crop.
  config.resampled_copies = True

  model = config.model
  model.name = "performer"
  model.n_fft = 512
  # Half-overlapping frames (32 ms windows, 16 ms hop): half the tokens of hop 128, so a step
  # costs half as much and twice the steps fit the same quarter of an hour. On unseen music
  # that bought more than the finer hop (docs/quick.md).
  model.hop = 256
  model.d_model = 128
  model.num_layers = 4
  model.num_heads = 4
  model.mlp_dim = 256
  model.num_features = 64
  model.dropout_rate = 0.0  # too few steps to overfit; dropout only slows learning here
  model.remat = False  # memory is plentiful at this size; recomputation only costs time

  config.batch_size = 8
  config.learning_rate = 1e-3
  config.end_learning_rate = 1e-4
  config.warmup_steps = 100
  config.num_train_steps = 3000

  config.log_every_steps = 50
  config.eval_every_steps = 500
  config.checkpoint_every_steps = 500
  config.num_eval_examples = 32
  return config
