"""FAVOR+ attention: softmax attention estimated with positive orthogonal random features.

Choromanski et al. 2021, "Rethinking Attention with Performers". For a query q and a key k
(already scaled by d^-1/4 each, so that q·k is the softmax logit q·k/√d),

  exp(q·k) = E_w[φ(q)·φ(k)],  φ(x) = exp(W x − |x|²/2) / √m,  rows of W ~ N(0, I_d),

so softmax(Q Kᵀ) V ≈ diag(φ(Q) (φ(K)ᵀ 1))⁻¹ φ(Q) (φ(K)ᵀ V): linear in the length, and no
length × length array is ever built. The features are positive, so every denominator is a
sum of positive terms (the "+" in FAVOR+), unlike trigonometric features whose estimate can
be negative and blow up when normalised.
"""

import functools
import math

import jax
import jax.numpy as jnp

# The smallest denominator: reached only when every key's features underflow for the
# features a query weights (keys ~87 nats below the strongest one). The numerator is then
# as small, so the output tends to 0 instead of 0/0. A floor added to every feature (as in
# the reference implementation) would bias the estimate instead: with unit-scale keys most
# stabilised key features are ~1e-8, far below a 1e-6 floor.
DENOMINATOR_FLOOR = 1e-30


@functools.partial(jax.jit, static_argnums=(1, 2))
def orthogonal_features(key: jax.Array, num_features: int, head_dim: int) -> jax.Array:
  """Random feature matrix `[num_features, head_dim]` with orthogonal rows inside each block.

  Rows come in blocks of `head_dim` mutually orthogonal directions (QR of a Gaussian matrix);
  each row is then given the length of an independent Gaussian vector (chi-distributed with
  `head_dim` degrees of freedom), so every row is marginally N(0, I) and the estimate stays
  unbiased while orthogonality lowers its variance (Performers, section 2.4).
  """
  if num_features < 1 or head_dim < 1:
    raise ValueError(f"num_features and head_dim must be >= 1, got {num_features}, {head_dim}")
  num_blocks = -(-num_features // head_dim)
  block_key, norm_key = jax.random.split(key)
  gaussian = jax.random.normal(block_key, (num_blocks, head_dim, head_dim), jnp.float32)
  # Rows of Qᵀ are orthonormal; the sign fix makes the draw Haar-distributed.
  q, r = jnp.linalg.qr(gaussian)
  q = q * jnp.sign(jnp.diagonal(r, axis1=-2, axis2=-1))[:, None, :]
  directions = jnp.swapaxes(q, -1, -2).reshape(num_blocks * head_dim, head_dim)[:num_features]
  norms = jnp.linalg.norm(
    jax.random.normal(norm_key, (num_features, head_dim), jnp.float32), axis=-1
  )
  return directions * norms[:, None]


def positive_features(x: jax.Array, features: jax.Array) -> jax.Array:
  """Unstabilised φ(x) = exp(W x − |x|²/2)/√m: `[..., d]` -> `[..., m]`.

  The plain estimator, E[φ(x)·φ(y)] = exp(x·y); `favor_attention` uses a stabilised form
  that differs from it by per-query and per-call constants which cancel in the softmax.
  """
  x = x.astype(jnp.float32)
  projection = x @ features.T.astype(jnp.float32)
  squared_norm = 0.5 * jnp.sum(x * x, axis=-1, keepdims=True)
  return jnp.exp(projection - squared_norm) / math.sqrt(features.shape[0])


def _stabilised_features(q, k, features):
  """φ(q), φ(k) `[batch, length, heads, m]` in float32, each up to a constant that cancels.

  Queries: the row maximum of the exponent is subtracted (a per-query factor cancels between
  numerator and denominator, and so does exp(−|q|²/2)), so each row's largest feature is 1.
  Keys: one maximum over all keys and features of a (batch, head) is subtracted, the only
  shift that is common to every term of the sums over keys. The maxima carry no gradient;
  the result does not depend on them mathematically.
  """
  head_dim = q.shape[-1]
  scale = head_dim**-0.25
  features = features.astype(jnp.float32)
  q = q.astype(jnp.float32) * scale
  k = k.astype(jnp.float32) * scale
  q_exponent = jnp.einsum("blhd,md->blhm", q, features)
  q_exponent = q_exponent - jax.lax.stop_gradient(q_exponent.max(axis=-1, keepdims=True))
  k_exponent = jnp.einsum("blhd,md->blhm", k, features)
  k_exponent = k_exponent - 0.5 * jnp.sum(k * k, axis=-1, keepdims=True)
  k_exponent = k_exponent - jax.lax.stop_gradient(k_exponent.max(axis=(1, 3), keepdims=True))
  norm = 1.0 / math.sqrt(features.shape[0])
  return jnp.exp(q_exponent) * norm, jnp.exp(k_exponent) * norm


def favor_attention(
  q: jax.Array,
  k: jax.Array,
  v: jax.Array,
  features: jax.Array,
  *,
  causal: bool = False,
  chunk_size: int = 128,
) -> jax.Array:
  """FAVOR+ estimate of softmax(q kᵀ/√d) v: `[batch, length, heads, head_dim]`.

  Args:
    q, k, v: `[batch, length, heads, head_dim]`, any float dtype; all arithmetic is float32
      and the result is cast back to `q.dtype`.
    features: `[num_features, head_dim]`, e.g. from `orthogonal_features`.
    causal: position t attends to positions <= t only. Computed chunk by chunk with a running
      prefix sum (`lax.scan`), O(length · features · head_dim) time and O(length) memory.
      The key stabiliser is still the maximum over all keys (it carries no gradient, so the
      output's gradient with respect to later inputs is exactly zero); a streaming
      implementation would replace it with a running maximum.
    chunk_size: causal mode only: positions per scan step (intra-chunk terms are
      chunk_size², so keep it small).
  """
  if q.ndim != 4 or q.shape != k.shape or k.shape[:3] != v.shape[:3]:
    raise ValueError(
      f"favor_attention expects q, k, v [batch, length, heads, head_dim], got {q.shape}, "
      f"{k.shape}, {v.shape}"
    )
  if features.ndim != 2 or features.shape[1] != q.shape[-1]:
    raise ValueError(f"features must be [num_features, {q.shape[-1]}], got {features.shape}")
  phi_q, phi_k = _stabilised_features(q, k, features)
  v32 = v.astype(jnp.float32)
  if causal:
    numerator, denominator = _causal_sums(phi_q, phi_k, v32, chunk_size)
  else:
    key_values = jnp.einsum("blhm,blhd->bhmd", phi_k, v32)
    numerator = jnp.einsum("blhm,bhmd->blhd", phi_q, key_values)
    denominator = jnp.einsum("blhm,bhm->blh", phi_q, phi_k.sum(axis=1))
  return _normalise(numerator, denominator).astype(q.dtype)


@jax.custom_jvp
def _normalise(numerator, denominator):
  """numerator `[..., d]` / denominator `[...]`, the denominator floored at DENOMINATOR_FLOOR."""
  return numerator / jnp.maximum(denominator, DENOMINATOR_FLOOR)[..., None]


@_normalise.defjvp
def _normalise_jvp(primals, tangents):
  # Autodiff of a/b forms a/b², which underflows to 0 (and then gives 0·inf = NaN) for a
  # denominator below ~1e-19; (da − (a/b)·db)/b is the same derivative without b².
  numerator, denominator = primals
  d_numerator, d_denominator = tangents
  floored = jnp.maximum(denominator, DENOMINATOR_FLOOR)
  ratio = numerator / floored[..., None]
  d_denominator = jnp.where(denominator > DENOMINATOR_FLOOR, d_denominator, 0.0)
  return ratio, (d_numerator - ratio * d_denominator[..., None]) / floored[..., None]


def _causal_sums(phi_q, phi_k, v, chunk_size):
  """Causal sums Σ_{s<=t} (φq_t·φk_s) v_s `[b, l, h, d]` and Σ_{s<=t} φq_t·φk_s `[b, l, h]`."""
  batch, length, heads, m = phi_q.shape
  chunk = min(chunk_size, length)
  padded = -(-length // chunk) * chunk

  def to_chunks(x):
    # Zero padding at the end is harmless: padded keys come after every real query.
    x = jnp.pad(x, [(0, 0), (0, padded - length)] + [(0, 0)] * (x.ndim - 2))
    return jnp.moveaxis(x.reshape(batch, padded // chunk, chunk, *x.shape[2:]), 1, 0)

  lower = jnp.tril(jnp.ones((chunk, chunk), jnp.float32))

  def step(carry, chunk_inputs):
    key_values, key_sum = carry  # [b, h, m, d], [b, h, m]: sums over all earlier chunks
    cq, ck, cv = chunk_inputs
    within = jnp.einsum("bihm,bjhm->bhij", cq, ck) * lower
    numerator = jnp.einsum("bihm,bhmd->bihd", cq, key_values) + jnp.einsum(
      "bhij,bjhd->bihd", within, cv
    )
    denominator = jnp.einsum("bihm,bhm->bih", cq, key_sum) + jnp.einsum("bhij->bih", within)
    key_values = key_values + jnp.einsum("bjhm,bjhd->bhmd", ck, cv)
    key_sum = key_sum + ck.sum(axis=1)
    return (key_values, key_sum), (numerator, denominator)

  init = (
    jnp.zeros((batch, heads, m, v.shape[-1]), jnp.float32),
    jnp.zeros((batch, heads, m), jnp.float32),
  )
  _, (numerator, denominator) = jax.lax.scan(
    step, init, (to_chunks(phi_q), to_chunks(phi_k), to_chunks(v))
  )

  def from_chunks(x):
    return jnp.moveaxis(x, 0, 1).reshape(batch, padded, *x.shape[3:])[:, :length]

  return from_chunks(numerator), from_chunks(denominator)


def softmax_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, causal: bool = False):
  """Exact softmax(q kᵀ/√d) v `[batch, length, heads, head_dim]`, softmax in float32.

  The quadratic reference for `favor_attention` and the attention of the dense control.
  """
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
  logits = logits * q.shape[-1] ** -0.5
  if causal:
    length = q.shape[1]
    logits = jnp.where(jnp.tril(jnp.ones((length, length), bool)), logits, -jnp.inf)
  weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  return jnp.einsum("bhqk,bkhd->bqhd", weights, v, preferred_element_type=jnp.float32).astype(
    q.dtype
  )
