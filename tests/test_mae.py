"""Audio-MAE: span masks, the loss, no leak through either front end, pre-training and transfer.

Models here are ``configs/test.py``'s tiny Performer cut down further (1 encoder layer, 1
decoder layer). The end-to-end run pre-trains on a folder of 32 one-second clips of
``conftest.synthetic_stems`` mixtures (tones at random pitches plus noise drums; the 4-track
tiny MUSDB is too few songs: a model memorises their spectra instead of learning to read the
context) and scores its validation split (clips never trained on).
"""

from __future__ import annotations

import json
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TINY_RATE_HZ, synthetic_stems

from trackformer_jax import audio as audio_lib
from trackformer_jax import checkpoints, models, train
from trackformer_jax.losses import mae as mae_loss
from trackformer_jax.models import mae as mae_lib
from trackformer_jax.training import config_files
from trackformer_jax.training.tasks import mae as mae_task

LENGTH = 2000  # samples: 33 STFT frames at hop 64, 249 learned-front-end frames


def tiny_config(frontend: str = "stft", **mae_overrides):
  config = config_files.load_config("tiny:mae,learned" if frontend == "learned" else "tiny:mae")
  for name, value in mae_overrides.items():
    setattr(config.mae, name, value)
  return config


def harmonic_audio(key, batch: int, length: int = LENGTH) -> jax.Array:
  """Never-silent test audio `[batch, 1, length]`: random harmonic tones plus a little noise."""
  tone_key, noise_key = jax.random.split(key)
  frequencies = jax.random.uniform(tone_key, (batch, 1, 3), minval=0.01, maxval=0.2)
  t = jnp.arange(length)
  tones = jnp.sum(jnp.sin(2 * jnp.pi * frequencies[..., None] * t), axis=-2)
  return 0.1 * tones + 0.01 * jax.random.normal(noise_key, (batch, 1, length))


# --------------------------------------------------------------------------------------------
# Masks.


@pytest.mark.parametrize(
  "frames, ratio, span", [(33, 0.3, 4), (64, 0.3, 1), (100, 0.5, 7), (10, 0.95, 3), (20, 0.0, 4)]
)
def test_span_mask_has_the_exact_count_and_restore_inverts_the_shuffle(frames, ratio, span):
  batch = 16
  k = mae_lib.masked_count(frames, ratio)
  assert k == min(round(ratio * frames), frames - 1)
  make = jax.jit(mae_lib.span_mask, static_argnums=(1, 2, 3, 4))
  shuffle, restore, mask = jax.device_get(make(jax.random.PRNGKey(0), batch, frames, ratio, span))
  np.testing.assert_array_equal(mask.sum(-1), np.full(batch, k))
  # restore is the inverse permutation: unshuffling the shuffle gives time order back.
  positions = np.arange(frames)
  np.testing.assert_array_equal(
    np.take_along_axis(shuffle, restore, -1), np.tile(positions, (batch, 1))
  )
  np.testing.assert_array_equal(
    np.take_along_axis(restore, shuffle, -1), np.tile(positions, (batch, 1))
  )
  for row in range(batch):
    assert set(shuffle[row, :k]) == set(np.flatnonzero(mask[row]))
    # Masked frames come in runs: at most one run per chosen span (merged ones fewer).
    starts = np.flatnonzero(np.diff(np.concatenate([[0], mask[row].astype(int)])) == 1)
    assert len(starts) <= -(-k // span) + 1
  if 0 < k < frames - span:
    # Different examples get different masks.
    assert len({mask[row].tobytes() for row in range(batch)}) > 1


def test_masked_sample_slices_tile_time_and_hidden_tokens_are_those_whose_window_touches_them():
  for frontend in ("stft", "learned"):
    model_config = tiny_config(frontend).model
    frames = models.separator.num_frames(model_config, LENGTH)
    _, _, frame_mask = mae_lib.span_mask(jax.random.PRNGKey(3), 2, frames, 0.3, 4)
    sample_mask = np.asarray(mae_lib.frame_to_sample_mask(frame_mask, model_config, LENGTH))
    hidden = np.asarray(mae_lib.tokens_touching(jnp.asarray(sample_mask), model_config, frames))
    start, window, stride = mae_lib.frame_geometry(model_config, LENGTH)
    for row in range(2):
      for frame in range(frames):
        first = max(start + frame * stride, 0)
        last = min(start + frame * stride + window, LENGTH)
        assert hidden[row, frame] == sample_mask[row, first:last].any(), (frontend, frame)
      # Every masked frame is hidden, and (frames inside the signal) owns `stride` samples.
      assert np.all(hidden[row][np.asarray(frame_mask[row])])
      assert 0 < sample_mask[row].sum() <= int(frame_mask[row].sum()) * stride + stride


# --------------------------------------------------------------------------------------------
# The loss.


def test_loss_ignores_visible_positions_and_a_zero_predictor_scores_one():
  key_targets, key_pred, key_noise = jax.random.split(jax.random.PRNGKey(0), 3)
  targets = mae_lib.normalise_per_position(3.0 * jax.random.normal(key_targets, (4, 20, 12)) + 5.0)
  loss_mask = (jnp.arange(20)[None] % 3 == 0).astype(jnp.float32) * jnp.ones((4, 1))
  predictions = jax.random.normal(key_pred, targets.shape)
  loss = mae_loss.masked_reconstruction_loss(predictions, targets, loss_mask)
  # Anything at visible positions (even inf) leaves the loss alone.
  changed = jnp.where(
    loss_mask[..., None] > 0, predictions, 100 * jax.random.normal(key_noise, targets.shape)
  )
  np.testing.assert_array_equal(
    mae_loss.masked_reconstruction_loss(changed, targets, loss_mask), loss
  )
  with_inf = jnp.where(loss_mask[..., None] > 0, predictions, jnp.inf)
  np.testing.assert_array_equal(
    mae_loss.masked_reconstruction_loss(with_inf, targets, loss_mask), loss
  )
  # A change at a masked position does change it.
  moved = predictions.at[:, 0].add(1.0)
  assert np.all(mae_loss.masked_reconstruction_loss(moved, targets, loss_mask) != loss)
  # Direct formula.
  expected = np.asarray(
    [
      np.mean(
        (np.asarray(predictions[b]) - np.asarray(targets[b]))[np.asarray(loss_mask[b]) > 0] ** 2
      )
      for b in range(4)
    ]
  )
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  zero = mae_loss.masked_reconstruction_loss(jnp.zeros_like(targets), targets, loss_mask)
  np.testing.assert_allclose(zero, 1.0, atol=1e-4)
  with pytest.raises(ValueError, match="loss_mask"):
    mae_loss.masked_reconstruction_loss(predictions, targets, loss_mask[:, :5])


def test_linear_interpolation_reference():
  frames = 9
  ramp = jnp.arange(frames, dtype=jnp.float32)[None, :, None] * jnp.array([1.0, -2.0])
  visible = jnp.array([[False, True, False, False, True, True, False, False, False]])
  interpolated = mae_loss.interpolate_from_visible(ramp, visible)
  # Exact on a straight line between visible frames, held flat beyond the last visible one.
  np.testing.assert_allclose(interpolated[0, 1:6], ramp[0, 1:6], rtol=1e-6)
  np.testing.assert_allclose(interpolated[0, 0], ramp[0, 1])
  np.testing.assert_allclose(interpolated[0, 6:], np.broadcast_to(ramp[0, 5], (3, 2)))


# --------------------------------------------------------------------------------------------
# No leak through the front end, and the model's targets.


@pytest.mark.slow
@pytest.mark.parametrize("frontend", ["stft", "learned"])
def test_no_gradient_reaches_masked_samples_and_their_values_change_nothing(frontend):
  config = tiny_config(frontend)
  model = mae_lib.create_mae(config)
  audio = harmonic_audio(jax.random.PRNGKey(1), 2)
  mask_key = jax.random.PRNGKey(7)
  variables = jax.jit(model.init)(jax.random.PRNGKey(0), audio, mask_key)

  @jax.jit
  def loss_and_grad(audio):
    def loss(audio):
      predictions, aux = model.apply(variables, audio, mask_key)
      per_example = mae_loss.masked_reconstruction_loss(
        predictions, aux["targets"], aux["loss_mask"]
      )
      return jnp.sum(per_example), (predictions, aux)

    return jax.value_and_grad(loss, has_aux=True)(audio)

  (loss, (predictions, aux)), grad = loss_and_grad(audio)
  sample_mask = np.asarray(aux["sample_mask"])[:, None, :]
  grad = np.asarray(grad)
  assert sample_mask.any() and not sample_mask.all()
  assert np.all(grad[sample_mask] == 0.0)
  assert np.abs(grad[~sample_mask]).max() > 0  # the visible samples do get a gradient
  # Rewriting the masked samples changes no prediction (the targets, computed from the
  # clean mixture, do change: they are what the model must guess).
  noise = jax.random.normal(jax.random.PRNGKey(2), audio.shape)
  rewritten = jnp.where(sample_mask, noise, audio)
  (_, (predictions2, aux2)), _ = loss_and_grad(rewritten)
  np.testing.assert_array_equal(predictions2, predictions)
  assert not np.array_equal(aux2["targets"], aux["targets"])
  assert int(aux["loss_mask"].sum()) == 2 * mae_lib.masked_count(aux["loss_mask"].shape[1], 0.3)
  # A zero predictor on real (normalised) targets scores about 1.
  zero = mae_loss.masked_reconstruction_loss(
    jnp.zeros_like(predictions), aux["targets"], aux["loss_mask"]
  )
  np.testing.assert_allclose(zero, 1.0, atol=1e-3)


def test_bad_mae_config_is_one_line_naming_the_field():
  for field, value in (("mask_ratio", 1.0), ("span_frames", 0), ("decoder_layers", -1)):
    config = tiny_config()
    setattr(config.mae, field, value)
    with pytest.raises(train.ConfigError, match=f"config.mae.{field}"):
      mae_task.validate_config(config)
  config = tiny_config()
  config.init_from = "runs/somewhere"
  with pytest.raises(train.ConfigError, match="init_from"):
    mae_task.validate_config(config)


# --------------------------------------------------------------------------------------------
# Pre-training end to end, then the transfer.


def encoder_activations(model: nn.Module, params, audio) -> jax.Array:
  """The separator's `transformer` output `[B, frames, d_model]`."""
  _, state = model.apply(
    {"params": params},
    audio,
    capture_intermediates=lambda module, _: module.name == "transformer",
    mutable=["intermediates"],
  )
  return state["intermediates"]["transformer"]["__call__"][0]


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory) -> pathlib.Path:
  root = tmp_path_factory.mktemp("mae_clips")
  for index in range(32):
    stems = synthetic_stems(500 + index, TINY_RATE_HZ, 1, TINY_RATE_HZ)
    audio_lib.write_audio(root / f"clip{index:02d}.wav", stems.sum(0), TINY_RATE_HZ, "FLOAT")
  return root


@pytest.mark.slow
def test_pretraining_beats_interpolation_and_transfers_exactly(clip_folder, tmp_path, monkeypatch):
  config = tiny_config()
  config.data = f"folder:{clip_folder}"
  # Wide enough to predict 129-bin spectra (a width-32 head cannot beat the straight line),
  # and a positional conv that spans a hidden gap (span 4 + 2 tokens of window overlap a side).
  config.model.d_model = 128
  config.model.mlp_dim = 256
  config.model.pos_conv_kernel = 17
  # Measured: held-out loss 0.378 / 0.300 / 0.241 / 0.227 / 0.225 / 0.217 at steps 100..600,
  # against 0.237 for linear interpolation (it passes the line near step 400).
  config.num_train_steps = 600
  config.warmup_steps = 20
  config.learning_rate = 3e-3
  config.end_learning_rate = 3e-4
  config.log_every_steps = 200
  config.eval_every_steps = 600
  config.checkpoint_every_steps = 600
  config.num_eval_examples = 8
  # Count traces of the loss inside the real loop's step: one, however many steps run.
  traces = []
  original_loss = mae_task.training_loss

  def counted_loss(*args):
    traces.append(1)
    return original_loss(*args)

  monkeypatch.setattr(mae_task, "training_loss", counted_loss)
  workdir = tmp_path / "mae"
  state = train.train_and_evaluate(config, workdir)  # dispatches on config.task
  assert int(state.step) == 600
  assert len(traces) == 1

  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  evals = {row["step"]: row for row in rows if "eval/reconstruction_loss" in row}
  assert sorted(evals) == [0, 600]
  # Held-out masked spans: better than before training, and better than a straight line
  # drawn across each gap from the visible frames' clean spectra.
  final = evals[600]
  assert final["eval/reconstruction_loss"] < evals[0]["eval/reconstruction_loss"] - 0.2
  assert final["eval/reconstruction_loss"] < final["eval/interpolation_loss"]
  train_rows = [row for row in rows if "train/reconstruction" in row]
  assert train_rows[-1]["train/reconstruction"] < train_rows[0]["train/reconstruction"]

  # Transfer: the separator's encoder computes what the pre-trained one computes unmasked.
  mixit_config = config.copy_and_resolve_references()
  mixit_config.task = "mixit"
  mixit_config.init_from = str(workdir)
  separator = models.create_model(mixit_config.model)
  audio = harmonic_audio(jax.random.PRNGKey(5), 2, 4000)
  fresh = jax.jit(separator.init)(jax.random.PRNGKey(1), audio)["params"]
  transferred = train.transfer_encoder(fresh, mixit_config, "latest")
  _, saved = checkpoints.load_params(workdir, "latest")
  for name in ("input_projection", "positional_conv", "transformer"):
    jax.tree.map(np.testing.assert_array_equal, transferred[name], saved[name])
  for name in ("output_norm", "mask_head"):  # the heads stay fresh
    jax.tree.map(np.testing.assert_array_equal, transferred[name], fresh[name])
  mae_model = mae_lib.create_mae(config)
  _, aux = jax.jit(mae_model.apply)({"params": saved}, audio)  # mask_key None: nothing masked
  separator_encoded = jax.jit(lambda p, a: encoder_activations(separator, p, a))(transferred, audio)
  np.testing.assert_allclose(separator_encoded, aux["encoded"], rtol=1e-5, atol=1e-5)
  assert not np.allclose(
    jax.jit(lambda p, a: encoder_activations(separator, p, a))(fresh, audio), aux["encoded"]
  )

  # Clear errors naming the workdir.
  mixit_config.init_from = str(tmp_path / "nowhere")
  with pytest.raises(checkpoints.CheckpointError, match="nowhere.*mae_pretrain.py"):
    train.transfer_encoder(fresh, mixit_config)
  mixit_config.init_from = str(workdir)
  mixit_config.model.d_model = 64
  narrow = jax.eval_shape(
    models.create_model(mixit_config.model).init, jax.random.PRNGKey(1), audio
  )
  with pytest.raises(
    checkpoints.CheckpointError, match=r"mae': input_projection/\w+ is \(.*\) in step 600"
  ):
    train.transfer_encoder(narrow["params"], mixit_config)
  mixit_config.model.hop = 128
  with pytest.raises(checkpoints.CheckpointError, match="model.hop = 64"):
    train.transfer_encoder(narrow["params"], mixit_config)


# --------------------------------------------------------------------------------------------
# Configs.


def load_config(name: str, arg: str | None = None):
  return config_files.load_config(f"{name}:{arg}" if arg else name)


def test_perf_configs_start_from_the_pretraining_run_and_their_twins_do_not():
  pretrain_config = load_config("mae_pretrain")
  assert pretrain_config.task == "mae" and not pretrain_config.init_from
  train.validate_config(pretrain_config, num_devices=1)
  for seconds in (3, 5, 10, 30):
    with_mae = load_config(f"perf{seconds}")
    without = load_config(f"perf{seconds}_nomae")
    assert with_mae.init_from == "runs/mae_pretrain" and without.init_from == ""
    without.init_from = with_mae.init_from
    assert without.to_dict() == with_mae.to_dict()  # the twins differ in init_from only
    # What the transfer checks, and every shape of the encoder, matches the pre-training.
    assert with_mae.model.to_dict() == pretrain_config.model.to_dict()
    for field in ("sample_rate_hz", "channels"):
      assert with_mae[field] == pretrain_config[field]
  stereo = load_config("perf30_stereo")
  assert stereo.init_from == "runs/mae_pretrain_stereo"
  assert load_config("mae_pretrain", "stereo").channels == stereo.channels == 2
  quick = load_config("quick")
  quick_pretrain = load_config("mae_pretrain", "quick")
  assert quick_pretrain.model.to_dict() == quick.model.to_dict()
  assert quick_pretrain.sample_rate_hz == quick.sample_rate_hz
  with pytest.raises(ValueError, match="unknown switch"):
    load_config("mae_pretrain", "huge")


@pytest.mark.slow
def test_the_quick_pretraining_step_compiles():
  config = load_config("mae_pretrain", "quick")
  train.validate_config(config, num_devices=1)
  model = mae_lib.create_mae(config)
  optimizer = train.create_optimizer(config)
  mesh = train.create_mesh(jax.devices()[:1])
  state, batch, rng = train.abstract_train_inputs(config, model, optimizer, mesh)
  step = train.compile_train_step(config, model, optimizer, mesh)
  compiled = step.lower(state, {"mom": batch["mom"]}, rng).compile()
  new_state, metrics = compiled.out_info
  assert jax.tree.structure(new_state) == jax.tree.structure(state)
  assert {"loss", "reconstruction", "grad_norm", "learning_rate"} <= set(metrics)
