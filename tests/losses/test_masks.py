"""Mask losses and diagnostics: the ends stated in each docstring, on constructed inputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trackformer_jax.losses.masks import (
  diversity_loss,
  effective_mask_count,
  mask_overlap,
  sparsity_loss,
)

N = 8
TIME = 4096


def _disjoint_masks(batch=2, frames=16, bins=32):
  """Each time-frequency bin belongs to exactly one of N masks (a random partition)."""
  owner = np.random.default_rng(0).integers(0, N, size=(batch, frames, bins))
  return jnp.asarray(np.eye(N)[owner].transpose(0, 3, 1, 2), jnp.float32)  # [batch, N, F, B]


def _mixture(batch=2, channels=()):
  return jnp.asarray(
    np.random.default_rng(1).standard_normal((batch, *channels, TIME)), jnp.float32
  )


def test_diversity_ends():
  masks = _disjoint_masks()
  np.testing.assert_allclose(diversity_loss(masks), 0.0, atol=1e-7)
  same = jnp.broadcast_to(jax.random.uniform(jax.random.PRNGKey(0), (2, 1, 16, 32)), (2, N, 16, 32))
  np.testing.assert_allclose(diversity_loss(same), 1.0, atol=1e-5)
  np.testing.assert_allclose(
    diversity_loss(same * jnp.arange(1, N + 1)[:, None, None]), 1.0, atol=1e-5
  )
  # In between, and the diagnostic is the same number.
  mixed = 0.5 * masks + 0.5 * same
  assert 0.0 < float(diversity_loss(mixed)) < 1.0
  np.testing.assert_allclose(mask_overlap(mixed), diversity_loss(mixed))
  # A single mask has no pair; an all-zero mask counts as disjoint and has finite gradients.
  assert float(diversity_loss(same[:, :1])) == 0.0
  with_silent = same.at[:, 0].set(0.0)
  np.testing.assert_allclose(
    diversity_loss(with_silent), (N - 1) * (N - 2) / (N * (N - 1)), atol=1e-5
  )
  assert np.all(np.isfinite(jax.grad(diversity_loss)(with_silent)))


def test_mask_overlap_has_no_gradient():
  masks = _disjoint_masks() * 0.5 + 0.1
  np.testing.assert_array_equal(jax.grad(mask_overlap)(masks), 0.0)
  assert np.any(jax.grad(diversity_loss)(masks) != 0.0)


@pytest.mark.parametrize("channels", [(), (2,)])
def test_rms_ratio_ends_and_blind_spot(channels):
  mixture = _mixture(channels=channels)
  one_active = jnp.zeros((2, N, *channels, TIME)).at[:, 3].set(mixture)
  np.testing.assert_allclose(sparsity_loss(one_active, mixture), 1.0, atol=1e-5)
  # The blind spot: N in-phase copies x/N score the same 1.
  copies = jnp.broadcast_to(mixture[:, None] / N, one_active.shape)
  np.testing.assert_allclose(sparsity_loss(copies, mixture), 1.0, atol=1e-5)
  # N orthogonal equal-energy parts summing to x (disjoint time segments): sqrt(N).
  segment = (jnp.arange(TIME) * N) // TIME  # which part owns each sample
  parts = jnp.where(
    segment == jnp.arange(N).reshape((N,) + (1,) * (len(channels) + 1)), mixture[:, None], 0.0
  )
  np.testing.assert_allclose(parts.sum(axis=1), mixture, atol=1e-6)
  np.testing.assert_allclose(sparsity_loss(parts, mixture), np.sqrt(N), rtol=0.05)
  # Finite gradient with silent outputs.
  grad = jax.grad(sparsity_loss)(one_active, mixture)
  assert np.all(np.isfinite(grad))


@pytest.mark.parametrize("channels", [(), (2,)])
def test_entropy_ends_and_no_blind_spot(channels):
  mixture = _mixture(channels=channels)
  one_active = jnp.zeros((2, N, *channels, TIME)).at[:, 3].set(mixture)
  np.testing.assert_allclose(sparsity_loss(one_active, mixture, kind="entropy"), 0.0, atol=1e-6)
  # One active output per frame, a different one in each frame: still 0.
  frame = jnp.arange(TIME) // 512
  per_frame = jnp.where(
    frame % N == jnp.arange(N).reshape((N,) + (1,) * (len(channels) + 1)), mixture[:, None], 0.0
  )
  np.testing.assert_allclose(
    sparsity_loss(per_frame, mixture, kind="entropy", frame_length=512), 0.0, atol=1e-6
  )
  # In-phase copies, the rms ratio's blind spot, are the worst case here: 1.
  copies = jnp.broadcast_to(mixture[:, None] / N, one_active.shape)
  np.testing.assert_allclose(sparsity_loss(copies, mixture, kind="entropy"), 1.0, atol=1e-5)
  # Silent frames weigh nothing; a length that is not a multiple of the frame is padded.
  padded = jnp.concatenate([copies, jnp.zeros(copies.shape[:-1] + (3000,))], axis=-1)
  np.testing.assert_allclose(sparsity_loss(padded, mixture, kind="entropy"), 1.0, atol=1e-5)
  grad = jax.grad(lambda e: sparsity_loss(e, mixture, kind="entropy"))(one_active)
  assert np.all(np.isfinite(grad))
  silent = jnp.zeros_like(one_active)
  assert np.isfinite(float(sparsity_loss(silent, mixture, kind="entropy")))
  assert np.all(np.isfinite(jax.grad(lambda e: sparsity_loss(e, mixture, kind="entropy"))(silent)))


def test_sparsity_rejects_unknown_kind():
  with pytest.raises(ValueError, match="rms_ratio"):
    sparsity_loss(jnp.zeros((1, 2, 8)), jnp.zeros((1, 8)), kind="l1")


def test_effective_mask_count_ends():
  mixture = _mixture(channels=(2,))
  one_active = jnp.zeros((2, N, 2, TIME)).at[:, 5].set(mixture)
  np.testing.assert_allclose(effective_mask_count(one_active), [1.0, 1.0], atol=1e-6)
  equal = jnp.broadcast_to(mixture[:, None], one_active.shape) * jnp.where(
    jnp.arange(N) % 2 == 0, 1.0, -1.0
  ).reshape(1, N, 1, 1)
  np.testing.assert_allclose(effective_mask_count(equal), [N, N], rtol=1e-5)
  # Two outputs of equal energy, the rest silent: 2.
  two = one_active.at[:, 0].set(-mixture)
  np.testing.assert_allclose(effective_mask_count(two), [2.0, 2.0], rtol=1e-5)
  np.testing.assert_allclose(effective_mask_count(jnp.zeros_like(one_active)), [1.0, 1.0])
