"""Separator models: shapes, mixture consistency, context, FAVOR+ vs dense, STFT, registry, CLI."""

import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.signal

from configs import default
from configs import test as test_config
from trackformer_jax import models
from trackformer_jax.bench.memory import step_memory_bytes
from trackformer_jax.models import convtasnet, separator

REPO = Path(__file__).resolve().parents[2]
KEY = jax.random.PRNGKey(0)


def model_config(name="performer", **overrides):
  config = test_config.get_config().model
  config.name = name
  for field, value in overrides.items():
    config[field] = value
  return config


@pytest.mark.parametrize(
  "name, frontend, channels, length",
  [
    ("performer", "stft", 2, 777),
    ("performer", "learned", 1, 1001),
    ("dense_transformer", "stft", 2, 999),
    ("convtasnet", "stft", 1, 555),
  ],
)
def test_shapes_masks_and_mixture_consistency(name, frontend, channels, length):
  config = model_config(name, frontend=frontend)
  model = models.create_model(config)
  mixture = jax.random.normal(jax.random.PRNGKey(1), (2, channels, length))
  # init_with_output: one compilation gives parameters and the forward pass.
  (estimates, aux), _ = jax.jit(model.init_with_output)(KEY, mixture)
  n = config.num_outputs
  assert estimates.shape == (2, n, channels, length)
  masks = aux["masks"]
  if name == "convtasnet":
    assert masks.shape[:2] == (2, n) and masks.shape[3] == config.tasnet_N
  else:
    bins = config.n_fft // 2 + 1 if frontend == "stft" else config.encoder_filters
    assert masks.shape == (2, n, separator.num_frames(config, length), bins)
  assert float(masks.min()) >= 0.0 and float(masks.max()) <= 1.0
  assert bool(jnp.all(jnp.isfinite(estimates)))
  np.testing.assert_allclose(estimates.sum(axis=1), mixture, atol=1e-5)


def test_options_softmax_masks_no_consistency_bfloat16_dropout_and_feature_redraw():
  # The learned front end: with STFT masks that sum to 1 the outputs would sum to the input
  # even without the projection.
  config = model_config(
    frontend="learned", mask_activation="softmax", mixture_consistency=False, dtype="bfloat16"
  )
  model = models.create_model(config)
  mixture = jax.random.normal(jax.random.PRNGKey(2), (1, 1, 700))
  variables = jax.jit(model.init)(KEY, mixture)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables))

  @jax.jit
  def run(variables, mixture, rng, feature_seed):
    eval_out = model.apply(variables, mixture, feature_seed=feature_seed)
    train_out = model.apply(variables, mixture, deterministic=False, rngs={"dropout": rng})
    return eval_out, train_out

  (estimates, aux), (train_estimates, _) = run(variables, mixture, KEY, 0)
  assert estimates.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(estimates)))
  np.testing.assert_allclose(aux["masks"].sum(axis=1), 1.0, atol=1e-5)
  # Without the projection the sum is only approximately the mixture.
  assert float(jnp.max(jnp.abs(estimates.sum(axis=1) - mixture))) > 1e-4
  assert float(jnp.max(jnp.abs(train_estimates - estimates))) > 0.0  # dropout is on
  (redrawn, _), _ = run(variables, mixture, KEY, 1)
  (again, _), _ = run(variables, mixture, KEY, 0)
  assert float(jnp.max(jnp.abs(redrawn - estimates))) > 0.0
  np.testing.assert_array_equal(again, estimates)
  assert run._cache_size() == 1  # a new feature_seed is a value, not a new trace


def test_convtasnet_paper_parameter_count():
  config = default.get_model_config()
  config.name = "convtasnet"
  config.num_outputs = 2
  model = models.create_model(config)
  variables = jax.eval_shape(lambda: model.init(KEY, jnp.zeros((1, 1, 1600))))
  count = sum(leaf.size for leaf in jax.tree.leaves(variables))
  assert abs(count - 5.1e6) / 5.1e6 < 0.02, count


def _input_gradient(model, variables, mixture, output_samples):
  """d(sum of output 0 over `output_samples`)/d(mixture) `[time]` (batch 1, mono)."""

  def last_frame(x):
    estimates, _ = model.apply(variables, x)
    return jnp.sum(estimates[0, 0, 0, output_samples])

  return jax.jit(jax.grad(last_frame))(mixture)[0, 0]


@pytest.mark.slow
def test_convtasnet_context_ends_at_its_receptive_field():
  sample_rate = 8000
  mixture = jax.random.normal(jax.random.PRNGKey(3), (1, 1, 30 * sample_rate))
  length = mixture.shape[-1]
  for norm in ("fLN", "gLN"):
    config = model_config("convtasnet", tasnet_norm=norm)
    model = models.create_model(config)
    variables = jax.jit(model.init)(KEY, mixture[..., :4000])
    stride = config.tasnet_L // 2
    grad = _input_gradient(model, variables, mixture, slice(length - stride, length))
    reach = convtasnet.receptive_field_samples(config)
    outside = np.abs(np.asarray(grad[: length - stride - reach]))
    if norm == "fLN":
      assert outside.max() == 0.0
      # ... and the computed field is tight: inputs just inside it matter.
      edge = np.asarray(grad[length - stride - reach : length - stride - reach + 2 * stride])
      assert np.abs(edge).max() > 0.0
    else:
      # gLN's mean and variance span the whole input: a (weak) global path.
      assert outside.max() > 0.0


@pytest.mark.slow
def test_performer_last_frame_depends_on_first_frame_of_30_seconds():
  config = model_config("performer")
  model = models.create_model(config)
  mixture = jax.random.normal(jax.random.PRNGKey(4), (1, 1, 30 * 8000))
  variables = jax.jit(model.init)(KEY, mixture[..., :4000])
  length = mixture.shape[-1]
  grad = _input_gradient(model, variables, mixture, slice(length - config.hop, length))
  first_frame = np.abs(np.asarray(grad[: config.hop]))
  assert np.all(np.isfinite(first_frame))
  assert first_frame.max() > 0.0


def test_performer_approaches_dense_control_with_many_features():
  mixture = jax.random.normal(jax.random.PRNGKey(5), (1, 1, 2000))
  dense = models.create_model(model_config("dense_transformer", num_heads=4))
  (reference, _), variables = jax.jit(dense.init_with_output)(KEY, mixture)

  def error(num_features):
    performer = models.create_model(
      model_config("performer", num_heads=4, num_features=num_features)
    )
    estimates, _ = jax.jit(performer.apply)(variables, mixture)
    return float(jnp.linalg.norm(estimates - reference) / jnp.linalg.norm(reference))

  few, many = error(8), error(2048)
  assert many < few / 2, (few, many)
  assert many < 0.01, many


@pytest.mark.parametrize("n_fft, hop, length", [(256, 64, 1000), (64, 16, 777), (16, 8, 37)])
def test_stft_matches_scipy_and_reconstructs(n_fft, hop, length):
  signal = np.random.default_rng(0).standard_normal((2, length))
  spectrum = np.asarray(separator.stft(jnp.asarray(signal), n_fft, hop))
  padded = np.pad(signal, ((0, 0), (0, -length % hop)))
  _, _, reference = scipy.signal.stft(
    padded, window="hann", nperseg=n_fft, noverlap=n_fft - hop, boundary="zeros", padded=True
  )
  np.testing.assert_allclose(spectrum, np.swapaxes(reference, -1, -2), atol=1e-6)
  rebuilt = np.asarray(separator.istft(jnp.asarray(spectrum), n_fft, hop, length))
  np.testing.assert_allclose(rebuilt, signal, atol=1e-5)
  # Under jit too: the window and the envelope are compiled in as constants.
  rebuilt = jax.jit(separator.istft, static_argnums=(1, 2, 3))(spectrum, n_fft, hop, length)
  np.testing.assert_allclose(np.asarray(rebuilt), signal, atol=1e-5)


def test_istft_refuses_a_length_its_frames_cannot_cover():
  # 5 frames of n_fft 256 at hop 64 span 512 samples; the first half window is padding.
  spectrum = jnp.zeros((5, 129), jnp.complex64)
  assert separator.istft(spectrum, 256, 64, 384).shape == (384,)
  with pytest.raises(ValueError, match="5 STFT frames at hop 64 cannot give 385 samples"):
    separator.istft(spectrum, 256, 64, 385)


def test_registry_errors_name_the_field():
  with pytest.raises(ValueError, match=r"config\.model\.name = 'tasnet'.*convtasnet"):
    models.create_model(model_config("tasnet"))
  with pytest.raises(ValueError, match=r"config\.model\.frontend"):
    models.create_model(model_config(frontend="mel"))
  with pytest.raises(ValueError, match=r"config\.model\.d_model"):
    models.create_model(model_config(d_model=30, num_heads=4))
  with pytest.raises(ValueError, match=r"config\.model\.n_fft"):
    models.create_model(model_config(n_fft=250, hop=64))
  with pytest.raises(ValueError, match=r"config\.model\.n_fft = 64.*2·hop"):
    models.create_model(model_config(n_fft=64, hop=64))
  with pytest.raises(ValueError, match=r"config\.model\.tasnet_L"):
    models.create_model(model_config("convtasnet", tasnet_L=15))


@pytest.mark.slow
def test_models_cli_prints_table_and_total():
  result = subprocess.run(
    [sys.executable, "-m", "trackformer_jax.models", "--config", "configs/test.py"],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 0, result.stderr[-2000:]
  config = test_config.get_config()
  model = models.create_model(config.model)
  mixture = jnp.zeros((1, config.channels, int(config.segment_seconds * config.sample_rate_hz)))
  variables = jax.eval_shape(lambda: model.init(KEY, mixture))
  count = sum(leaf.size for leaf in jax.tree.leaves(variables))
  assert "transformer" in result.stdout and "mask_head" in result.stdout
  assert f"performer: {count:,} parameters" in result.stdout

  bad = subprocess.run(
    [sys.executable, "-m", "trackformer_jax.models", "--config", "configs/test.py"]
    + ["--config.model.name=tasnet"],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert bad.returncode != 0
  assert "config.model.name = 'tasnet'" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.slow
def test_scanned_remat_lowers_compiled_step_memory():
  config = test_config.get_config()
  config.segment_seconds = 2.0
  config.model.num_layers = 4
  with_remat = step_memory_bytes(config)
  config.model.remat = False
  without = step_memory_bytes(config)
  assert with_remat["temp_bytes"] < 0.85 * without["temp_bytes"], (with_remat, without)
  assert with_remat["argument_bytes"] == without["argument_bytes"]
