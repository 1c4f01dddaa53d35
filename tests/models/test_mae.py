"""models/mae.py (Audio-MAE): span masks, and no leak through either front end.

Models here are ``configs/test.py``'s tiny Performer cut down further (``configs/tiny.py:mae``:
1 encoder layer, 1 decoder layer).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import harmonic_audio, tiny_mae_config

from trackformer_jax import models
from trackformer_jax.losses import mae as mae_loss
from trackformer_jax.models import mae as mae_lib

LENGTH = 2000  # samples: 33 STFT frames at hop 64, 249 learned-front-end frames


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
    model_config = tiny_mae_config(frontend).model
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
# No leak through the front end, and the model's targets.


@pytest.mark.slow
@pytest.mark.parametrize("frontend", ["stft", "learned"])
def test_no_gradient_reaches_masked_samples_and_their_values_change_nothing(frontend):
  config = tiny_mae_config(frontend)
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
