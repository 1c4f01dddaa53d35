"""losses/mae.py: the masked reconstruction loss and the interpolation reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trackformer_jax.losses import mae as mae_loss
from trackformer_jax.models import mae as mae_lib


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
