"""Audio-MAE's reconstruction loss and its linear-interpolation reference.

Both work on per-position normalised targets (`models.mae.normalise_per_position`), where a
predictor that always says zero scores 1: the loss reads as a fraction of the targets'
variance left unexplained.
"""

import jax
import jax.numpy as jnp


def masked_reconstruction_loss(
  predictions: jax.Array, targets: jax.Array, loss_mask: jax.Array
) -> jax.Array:
  """Mean squared error at the masked positions only, per example.

  loss_b = Σ_f m_bf · mean_d (p_bfd − t_bfd)² / Σ_f m_bf

  Args:
    predictions, targets: `[batch, frames, features]`.
    loss_mask: `[batch, frames]`, 1 at masked frames, 0 elsewhere.

  Returns:
    `[batch]`; 0 for an example with no masked frame.
  """
  if predictions.shape != targets.shape or loss_mask.shape != predictions.shape[:2]:
    raise ValueError(
      f"expected predictions and targets [batch, frames, features] and loss_mask [batch, "
      f"frames], got {predictions.shape}, {targets.shape} and {loss_mask.shape}"
    )
  error = jnp.mean(jnp.square(predictions - targets), axis=-1)  # [B, frames]
  # A select, not only a product: an infinite prediction at a visible position would make
  # 0 · inf = NaN of the loss.
  error = jnp.where(loss_mask > 0, error * loss_mask, 0.0)
  return jnp.sum(error, axis=-1) / jnp.maximum(jnp.sum(loss_mask, axis=-1), 1.0)


def interpolate_from_visible(targets: jax.Array, visible: jax.Array) -> jax.Array:
  """Each frame linearly interpolated between the nearest visible frames on either side.

  The reference a masked model must beat: it sees the same visible frames (their clean
  targets) and draws a straight line across each gap; beyond the first or last visible frame
  it holds that frame's value. Visible frames keep their own value.

  Args:
    targets: `[batch, frames, features]`.
    visible: bool `[batch, frames]`; every example needs at least one visible frame.

  Returns:
    `[batch, frames, features]`.
  """
  frames = targets.shape[1]
  position = jnp.arange(frames)
  left = jax.lax.cummax(jnp.where(visible, position, -1), axis=1)
  right = jax.lax.cummin(jnp.where(visible, position, frames), axis=1, reverse=True)
  has_left, has_right = left >= 0, right < frames
  left = jnp.where(has_left, left, right)
  right = jnp.where(has_right, right, left)
  span = jnp.maximum(right - left, 1)
  weight_right = jnp.where(right > left, (position - left) / span, 0.0)[..., None]
  gather = lambda index: jnp.take_along_axis(targets, index[..., None], axis=1)  # noqa: E731
  return (1.0 - weight_right) * gather(left) + weight_right * gather(right)
