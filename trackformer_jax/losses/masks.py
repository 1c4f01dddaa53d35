"""The seed's auxiliary mask losses and its two mask diagnostics (the seed: the work this
project reproduces, docs/history.md).

Layouts: masks ``[batch, N, ...]`` (any trailing axes: frames, frequency bins, channels);
estimates ``[batch, N, time]`` or ``[batch, N, channels, time]``; mixture ``[batch, time]``
or ``[batch, channels, time]``.
"""

import jax
import jax.numpy as jnp

SPARSITY_KINDS = ("rms_ratio", "entropy")


def diversity_loss(masks: jax.Array, eps: float = 1e-12) -> jax.Array:
  """Mean |cosine similarity| between the N masks of an example, averaged over the batch.

  Each mask ``masks[b, i]`` is flattened to one vector m_i; the loss is the mean over the
  batch of the mean over ordered pairs i ≠ j of |⟨m_i, m_j⟩| / (‖m_i‖ ‖m_j‖).
  Ends: **0** for masks with disjoint supports (no bin shared), **1** when all masks are
  identical (or proportional). An all-zero mask counts as disjoint from every other (its
  norm is floored at ``sqrt(eps)``). With N = 1 there are no pairs and the loss is 0.

  Returns a scalar. ``mask_overlap`` is the same number without gradient.
  """
  batch, num_masks = masks.shape[:2]
  if num_masks < 2:
    return jnp.zeros((), masks.dtype)
  flat = masks.reshape(batch, num_masks, -1)
  flat = flat / jnp.sqrt(jnp.sum(flat**2, axis=-1, keepdims=True) + eps)
  cosine = jnp.abs(jnp.einsum("bid,bjd->bij", flat, flat, precision=jax.lax.Precision.HIGHEST))
  off_diagonal = 1.0 - jnp.eye(num_masks, dtype=cosine.dtype)
  return jnp.sum(cosine * off_diagonal) / (batch * num_masks * (num_masks - 1))


def mask_overlap(masks: jax.Array) -> jax.Array:
  """The seed's "mask overlap" diagnostic: ``diversity_loss`` without gradient, in [0, 1]."""
  return jax.lax.stop_gradient(diversity_loss(masks))


def sparsity_loss(
  estimates: jax.Array,
  mixture: jax.Array,
  kind: str = "rms_ratio",
  frame_length: int = 1024,
  eps: float = 1e-8,
) -> jax.Array:
  """Rewards explaining the mixture with few active outputs; a scalar, mean over the batch.

  ``kind="rms_ratio"`` (the seed's, the default): Σ_i rms(ŝ_i) / rms(x), rms over channels
  and time (the denominator floored by ``eps``). For estimates that sum to x it is ≥ 1
  (triangle inequality), **1** for a single active output equal to x, and **√N** for N
  mutually orthogonal outputs of equal energy. Blind spot: it is also exactly **1** for N
  in-phase copies x/N, i.e. it cannot tell "one output does everything" from "every
  output plays the same thing quietly" (and mixture consistency makes the latter easy).

  ``kind="entropy"`` closes that gap: the signals are cut into frames of ``frame_length``
  samples (zero-padded at the end); in each frame f, p_if is output i's share of the
  frame's energy over outputs, and the loss is Σ_f w_f H(p_f) / log N with H the entropy
  and w_f the frame's share of the example's total estimate energy (silent frames weigh
  nothing). Ends: **0** when in every frame one output carries all the energy (it may be
  a different output in each frame), **1** when all outputs have equal energy in every
  frame, in-phase copies x/N included. ``mixture`` is not used by this variant. N = 1
  gives 0.
  """
  if kind == "rms_ratio":
    signal_axes = tuple(range(2, estimates.ndim))
    # + eps² keeps the gradient of the square root finite at a silent output.
    rms_estimates = jnp.sqrt(jnp.mean(estimates**2, axis=signal_axes) + eps**2)  # [batch, N]
    rms_mixture = jnp.sqrt(jnp.mean(mixture**2, axis=tuple(range(1, mixture.ndim))))
    return jnp.mean(jnp.sum(rms_estimates, axis=1) / jnp.maximum(rms_mixture, eps))
  if kind == "entropy":
    return _frame_energy_entropy(estimates, frame_length, eps)
  raise ValueError(f"sparsity kind {kind!r} is not one of {SPARSITY_KINDS}")


def _frame_energy_entropy(estimates, frame_length, eps):
  num_outputs = estimates.shape[1]
  if num_outputs < 2:
    return jnp.zeros((), estimates.dtype)
  time = estimates.shape[-1]
  pad = -time % frame_length
  padding = [(0, 0)] * (estimates.ndim - 1) + [(0, pad)]
  frames = jnp.pad(estimates, padding).reshape(estimates.shape[:-1] + (-1, frame_length))
  # Energy per output and frame: sum over channels (if any) and the samples of the frame.
  energy = jnp.sum(frames**2, axis=tuple(range(2, frames.ndim - 2)) + (-1,))  # [batch, N, frames]
  frame_energy = jnp.sum(energy, axis=1)  # [batch, frames]
  # Energies floored at eps keep 1/energy (and so the gradients) finite in near-silent
  # frames, which carry next to no weight anyway.
  share = energy / jnp.maximum(frame_energy[:, None], eps)
  # p·log(p + tiny): exactly 0 at p = 0 and at p = 1, with a finite gradient at p = 0.
  tiny = jnp.finfo(energy.dtype).tiny
  entropy = -jnp.sum(share * jnp.log(share + tiny), axis=1)  # [batch, frames]
  weight = frame_energy / jnp.maximum(jnp.sum(frame_energy, axis=-1, keepdims=True), eps)
  return jnp.mean(jnp.sum(weight * entropy, axis=-1)) / jnp.log(num_outputs)


def effective_mask_count(estimates: jax.Array) -> jax.Array:
  """exp(entropy) of the outputs' normalised mean energies: how many outputs are in use.

  q_i = E_i / Σ_j E_j with E_i the mean energy of ``estimates[b, i]`` over channels and
  time; the result is exp(−Σ_i q_i log q_i), per example ``[batch]``, in **[1, N]**:
  **1** when one output carries all the energy, **N** when all N have equal energy. An
  example whose outputs are all silent gets 1. No gradient is meant to flow (diagnostic).
  """
  energy = jnp.mean(estimates**2, axis=tuple(range(2, estimates.ndim)))  # [batch, N]
  tiny = jnp.finfo(energy.dtype).tiny
  share = energy / jnp.maximum(jnp.sum(energy, axis=1, keepdims=True), tiny)
  safe_share = jnp.where(share > 0, share, 1.0)
  return jnp.exp(-jnp.sum(share * jnp.log(safe_share), axis=1))
