"""FAVOR+ against exact softmax attention and against a direct random-feature computation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trackformer_jax.models.favor import (
  favor_attention,
  orthogonal_features,
  positive_features,
  softmax_attention,
)

HEAD_DIM = 32


def _qkv(key, batch=1, length=512, heads=4, head_dim=HEAD_DIM, scale=0.5):
  """Random q, k, v `[batch, length, heads, head_dim]`; q and k with std `scale` per entry.

  Unit-variance q, k put the logits' spread at ~1 nat per entry but |q|² ≈ d, where the
  positive-feature estimator's variance grows like exp(|q + k|²/√d): std 0.5 keeps the
  comparison about the method rather than about an input scale trained models avoid.
  """
  kq, kk, kv = jax.random.split(key, 3)
  shape = (batch, length, heads, head_dim)
  return (
    scale * jax.random.normal(kq, shape),
    scale * jax.random.normal(kk, shape),
    jax.random.normal(kv, shape),
  )


def mean_relative_error(estimate, reference):
  """Mean over (batch, position, head) of |estimate − reference| / |reference| (vectors)."""
  num = jnp.linalg.norm(estimate - reference, axis=-1)
  return float(jnp.mean(num / jnp.linalg.norm(reference, axis=-1)))


def favor_relative_errors(feature_counts=(16, 64, 256, 1024), draws=4, seed=0):
  """{num_features: mean relative error vs exact softmax}, averaged over `draws` draws."""
  q, k, v = _qkv(jax.random.key(seed))
  exact = softmax_attention(q, k, v)
  errors = {}
  for m in feature_counts:
    keys = jax.random.split(jax.random.key(seed + 1), draws)
    errors[m] = float(
      np.mean(
        [
          mean_relative_error(favor_attention(q, k, v, orthogonal_features(kf, m, HEAD_DIM)), exact)
          for kf in keys
        ]
      )
    )
  return errors


def test_orthogonal_features_blocks_and_norms():
  features = orthogonal_features(jax.random.key(0), 80, 16)
  assert features.shape == (80, 16)
  gram = np.asarray(features @ features.T)
  same_block = np.kron(np.eye(5), np.ones((16, 16)))
  assert np.max(np.abs(gram * same_block - np.diag(np.diag(gram)))) < 1e-3 * np.max(gram)
  assert np.max(np.abs(gram * (1 - same_block))) > 1.0  # blocks are independent draws
  # Chi(16)-distributed row norms: E|w|² = 16, Var|w|² = 32.
  many = orthogonal_features(jax.random.key(1), 2048, 16)
  assert abs(float(jnp.mean(jnp.sum(many**2, axis=-1))) - 16.0) < 0.6


@pytest.mark.slow
def test_error_falls_with_features_and_is_small_at_256():
  errors = favor_relative_errors()
  counts = sorted(errors)
  for fewer, more in zip(counts, counts[1:]):
    assert errors[more] < errors[fewer], errors
  # ~1/√m scaling: measured 0.73 / 0.39 / 0.25 / 0.14 at 16 / 64 / 256 / 1024 features (fixed
  # seeds); 0.3 leaves room for platform rounding, and is what std-0.5 inputs allow at 256.
  assert errors[256] < 0.3, errors


def test_kernel_average_converges_to_softmax_kernel():
  kx, ky = jax.random.split(jax.random.key(3))
  x = 0.5 * jax.random.normal(kx, (5, HEAD_DIM))
  y = 0.5 * jax.random.normal(ky, (5, HEAD_DIM))
  exact = jnp.exp(jnp.sum(x * y, axis=-1) / jnp.sqrt(HEAD_DIM))
  scale = HEAD_DIM**-0.25

  def estimate(key):
    w = orthogonal_features(key, 64, HEAD_DIM)
    return jnp.sum(positive_features(x * scale, w) * positive_features(y * scale, w), axis=-1)

  estimates = jax.vmap(estimate)(jax.random.split(jax.random.key(4), 4000))
  few = jnp.abs(jnp.mean(estimates[:40], axis=0) - exact) / exact
  many = jnp.abs(jnp.mean(estimates, axis=0) - exact) / exact
  # One 64-feature estimate has a relative std of ~0.5 at these norms, so 4000 draws leave
  # ~0.008: 0.03 is ~4 standard deviations.
  assert float(jnp.max(many)) < 0.03
  assert float(jnp.mean(many)) < float(jnp.mean(few))


@pytest.mark.slow
def test_causal_matches_masked_random_feature_kernel_and_ignores_future():
  q, k, v = _qkv(jax.random.key(5), batch=2, length=50, heads=2, head_dim=8)
  features = orthogonal_features(jax.random.key(6), 16, 8)
  out = favor_attention(q, k, v, features, causal=True, chunk_size=16)
  scale = 8**-0.25
  kernel = jnp.einsum(
    "bihm,bjhm->bhij",
    positive_features(q * scale, features),
    positive_features(k * scale, features),
  )
  kernel = kernel * jnp.tril(jnp.ones((50, 50)))
  reference = jnp.einsum("bhij,bjhd->bihd", kernel, v) / jnp.einsum("bhij->bih", kernel)[..., None]
  np.testing.assert_allclose(out, reference, rtol=1e-4, atol=1e-5)

  t = 20
  grads = jax.grad(
    lambda q, k, v: jnp.sum(favor_attention(q, k, v, features, causal=True, chunk_size=16)[:, t]),
    argnums=(0, 1, 2),
  )(q, k, v)
  for g in grads:
    assert float(jnp.max(jnp.abs(g[:, t + 1 :]))) == 0.0
    assert float(jnp.max(jnp.abs(g[:, : t + 1]))) > 0.0


@pytest.mark.slow
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_long_large_norm_inputs_stay_finite(causal, dtype):
  q, k, v = _qkv(jax.random.key(7), length=100_000, heads=1, head_dim=8, scale=10.0)
  q, k, v = (x.astype(dtype) for x in (q, k, v))
  features = orthogonal_features(jax.random.key(8), 16, 8)

  def loss(q, k, v):
    out = favor_attention(q, k, v, features, causal=causal, chunk_size=256)
    return jnp.sum(out.astype(jnp.float32) ** 2), out

  (_, out), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(q, k, v)
  assert out.dtype == dtype
  assert bool(jnp.all(jnp.isfinite(out.astype(jnp.float32))))
  for g in grads:
    assert bool(jnp.all(jnp.isfinite(g.astype(jnp.float32))))
  # An attention output is a convex combination of the values.
  assert float(jnp.max(jnp.abs(out.astype(jnp.float32)))) <= float(
    jnp.max(jnp.abs(v.astype(jnp.float32))) * 1.01
  )


def test_repeated_calls_do_not_retrace():
  traces = []

  @jax.jit
  def attend(q, k, v, features):
    traces.append(1)
    return favor_attention(q, k, v, features)

  for seed in range(3):
    q, k, v = _qkv(jax.random.key(seed), length=32, heads=2, head_dim=8)
    attend(q, k, v, orthogonal_features(jax.random.key(seed), 16, 8)).block_until_ready()
  assert len(traces) == 1
