"""Mixture invariant training (Wisdom et al. 2020) and mixture consistency (Wisdom et al. 2019).

Layouts: estimates ``[batch, M, time]`` or ``[batch, M, channels, time]``; mixtures
``[batch, K, time]`` or ``[batch, K, channels, time]``. A stereo signal is one vector of
``channels * time`` samples: every inner product below sums over channels and time.
"""

import jax
import jax.numpy as jnp

EPS = 1e-8  # ε of the objective (thresholded_neg_snr)
# The search scores all K^M assignments at once (per example): 4^8 = 65,536 is the largest
# case the project uses; 2^24 keeps a single example's scores under 64 MiB per mixture.
_MAX_ASSIGNMENTS = 1 << 24
# Floats one lax.map step of the search may hold ([chunk, K^M, K]); 2^24 floats = 64 MiB,
# so K = 4, M = 8 (2^18 floats per example) searches 64 examples at a time.
_SEARCH_CHUNK_FLOATS = 1 << 24
# Without HIGHEST, float32 dots on recent NVIDIA GPUs run as TF32 (10-bit mantissa): the
# Gram-formula errors would then be ~1e-3 of ||y||^2, as large as the 30 dB threshold itself.
_HIGHEST = jax.lax.Precision.HIGHEST


def _check_layout(estimates, mixtures):
  if estimates.ndim not in (3, 4) or mixtures.ndim != estimates.ndim:
    raise ValueError(
      "mixit_loss expects estimates [batch, M, time] with mixtures [batch, K, time], or "
      "estimates [batch, M, channels, time] with mixtures [batch, K, channels, time]; got "
      f"estimates {estimates.shape} and mixtures {mixtures.shape}"
    )
  if estimates.shape[0] != mixtures.shape[0] or estimates.shape[2:] != mixtures.shape[2:]:
    raise ValueError(
      "estimates and mixtures must share batch, channel and time axes; got "
      f"estimates {estimates.shape} and mixtures {mixtures.shape}"
    )


def assignment_labels(num_mixtures: int, num_estimates: int, xp=jnp):
  """Every way to send each of M estimates to one of K mixtures: ``labels [K^M, M]``.

  Assignment ``p`` sends estimate ``m`` to mixture ``(p // K^m) % K`` (the base-K digits of
  p). The one enumeration of the project: ``xp=jnp`` (int32, built from ``iota`` inside a
  traced program rather than embedded in it as a constant) for the in-graph search,
  ``xp=np`` for scoring's float64 search on whole songs (``scoring.all_assignments``).
  """
  k, m = num_mixtures, num_estimates
  dtype = xp.int32 if xp is jnp else None
  digit_weights = k ** xp.arange(m, dtype=dtype)
  return (xp.arange(k**m, dtype=dtype)[:, None] // digit_weights) % k


def assignment_matrices(num_mixtures: int, num_estimates: int) -> jax.Array:
  """``assignment_labels`` as 0/1 matrices ``[K^M, K, M]`` (each column holds exactly one 1)."""
  k, m = num_mixtures, num_estimates
  if k**m > _MAX_ASSIGNMENTS:
    raise ValueError(f"{k}^{m} = {k**m} assignments is more than the exact search handles")
  labels = assignment_labels(k, m)  # [K^M, M]
  return (labels[:, None, :] == jnp.arange(k)[None, :, None]).astype(jnp.float32)


def thresholded_neg_snr(residual_energy, mixture_energy, snr_max_db: float, xp=jnp):
  """MixIT's objective, the one definition: the sum over mixtures k (the last axis) of
  10·log10(‖y_k − ŷ_k‖² + τ‖y_k‖² + ε) − 10·log10(‖y_k‖² + ε), τ = 10^(−snr_max_db/10).

  ``xp=jnp`` in the graph (the loss and its search); ``xp=np`` for scoring's float64 search.
  """
  tau = 10.0 ** (-snr_max_db / 10.0)
  error_db = 10.0 * xp.log10(residual_energy + tau * mixture_energy + EPS)
  return xp.sum(error_db - 10.0 * xp.log10(mixture_energy + EPS), axis=-1)


def mixit_loss(
  estimates: jax.Array,
  mixtures: jax.Array,
  snr_max_db: float = 30.0,
  required: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
  """MixIT: the best of all K^M ways to remix M estimates into the K mixtures.

  Each estimate goes to exactly one mixture; ŷ_k is the sum of the estimates sent to k.
  The loss of an assignment is the negative thresholded SNR summed over mixtures,

    Σ_k 10·log10(‖y_k − ŷ_k‖² + τ‖y_k‖² + ε) − 10·log10(‖y_k‖² + ε),

  τ = 10^(−snr_max_db/10), ε = 1e-8, and the lowest over all assignments is returned.

  The search never builds K^M remixed signals. With G = [⟨s_m, s_n⟩] (M × M),
  c_k = [⟨y_k, s_m⟩]_m and A_k the k-th row of an assignment matrix,
  ‖y_k − ŷ_k‖² = ‖y_k‖² − 2·A_k·c_k + A_k G A_kᵀ, so after one O(M² · time) pass the
  search costs O(K^M · K · M) whatever the length (see ``_best_assignment``). The
  formula can cancel below 0 in float32 (clamped to 0); its error, ~1e-6·‖y_k‖², is far
  below the τ‖y_k‖² floor at 30 dB, but near-perfect estimates under a much higher
  ``snr_max_db`` may be ranked with that resolution. The returned loss is then
  recomputed from the chosen assignment's actual residual signals, so it is exact, and
  gradients flow through that assignment only (the choice itself carries none).

  Args:
    estimates: ``[batch, M, time]`` or ``[batch, M, channels, time]``.
    mixtures: ``[batch, K, time]`` or ``[batch, K, channels, time]``.
    snr_max_db: the SNR above which an estimate stops being rewarded.
    required: optional ``[batch, K]`` booleans: mixtures that must receive at least one
      estimate. Scoring stems (K = 4) uses it so that a model cannot leave a hard stem
      empty (scoring.best_assignment applies the same rule to whole songs); an example with
      more required mixtures than estimates is searched unconstrained.

  Returns:
    ``(loss [batch], mixing [batch, K, M])``; ``mixing`` is the chosen 0/1 matrix (each
    column has one 1), ``loss`` is in dB (lower is better; ``-K·snr_max_db`` at best).
  """
  estimates = jnp.asarray(estimates)
  mixtures = jnp.asarray(mixtures)
  _check_layout(estimates, mixtures)
  dtype = jnp.promote_types(jnp.promote_types(estimates.dtype, mixtures.dtype), jnp.float32)
  batch, num_estimates, num_mixtures = estimates.shape[0], estimates.shape[1], mixtures.shape[1]
  estimates = estimates.astype(dtype).reshape(batch, num_estimates, -1)
  mixtures = mixtures.astype(dtype).reshape(batch, num_mixtures, -1)

  mixture_energy = jnp.sum(mixtures**2, axis=-1)  # [batch, K]
  if required is None:
    required = jnp.zeros((batch, num_mixtures), bool)
  required = jnp.asarray(required, bool)
  if required.shape != (batch, num_mixtures):
    raise ValueError(f"required must be [batch, K] = {(batch, num_mixtures)}, got {required.shape}")
  feasible = jnp.sum(required, axis=-1, keepdims=True) <= num_estimates
  required = required & feasible
  mixing = jax.lax.stop_gradient(
    _best_assignment(estimates, mixtures, mixture_energy, required, num_mixtures, snr_max_db)
  )

  remixed = remix(mixing.astype(dtype), estimates, precision=_HIGHEST)
  residual_energy = jnp.sum((mixtures - remixed) ** 2, axis=-1)
  return thresholded_neg_snr(residual_energy, mixture_energy, snr_max_db), mixing


def _best_assignment(estimates, mixtures, mixture_energy, required, num_mixtures, snr_max_db):
  """The argmin assignment ``[batch, K, M]``, searched from inner products only.

  Meet in the middle: an assignment is a pair (a of the first h = M//2 estimates, b of the
  rest). Splitting G and c the same way,
    ‖y_k − ŷ_k‖² = ‖y_k‖² + u_k(a) + v_k(b) + 2·a_k G₁₂ b_kᵀ,
  with u_k(a) = a_k G₁₁ a_kᵀ − 2·a_k·c₁ₖ (K^h of them) and v_k(b) likewise (K^(M−h)); the
  coupling for all K^M pairs is one batched matmul. For K = 4, M = 8 that is about
  4·256·256·8 ≈ 2M multiply-adds per example instead of 4^8·4·8² ≈ 17M for the direct
  quadratic form, and the largest array is [K^h, K^(M−h), K] (1 MB).
  """
  estimates, mixtures, mixture_energy = jax.lax.stop_gradient((estimates, mixtures, mixture_energy))
  num_estimates = estimates.shape[1]
  gram = jnp.einsum("bmt,bnt->bmn", estimates, estimates, precision=_HIGHEST)
  cross = jnp.einsum("bkt,bmt->bkm", mixtures, estimates, precision=_HIGHEST)
  # The half-assignments as full-width [P, K, M] matrices (zeros on the other half), so a
  # and b each multiply the whole G: a G aᵀ = a_k G₁₁ a_kᵀ, (a G)·b = a_k G₁₂ b_kᵀ.
  h = num_estimates // 2
  first = assignment_matrices(num_mixtures, h)
  second = assignment_matrices(num_mixtures, num_estimates - h)
  first = jnp.pad(first, ((0, 0), (0, 0), (0, num_estimates - h))).astype(gram.dtype)
  second = jnp.pad(second, ((0, 0), (0, 0), (h, 0))).astype(gram.dtype)
  halves = jnp.concatenate([first, second], axis=0)
  num_first = first.shape[0]
  # Which mixtures each half-assignment gives at least one estimate: [P1, K], [P2, K].
  first_fills, second_fills = jnp.any(first > 0, axis=-1), jnp.any(second > 0, axis=-1)

  def search(stats):
    gram, cross, energy, needed = stats  # [M, M], [K, M], [K], [K] for one example
    # Both halves in ONE dot with G: two dots sharing G have been miscompiled for vmapped
    # batches on the CPU (docs/history.md); test_batched_search_equals_per_example guards it.
    projected = jnp.einsum("pkm,mn->pkn", halves, gram, precision=_HIGHEST)
    own = jnp.sum(halves * (projected - 2.0 * cross), axis=-1)  # [P1 + P2, K]
    coupling = jnp.einsum("pkn,qkn->pqk", projected[:num_first], second, precision=_HIGHEST)
    residual_energy = energy + own[:num_first, None, :] + own[None, num_first:, :] + 2.0 * coupling
    loss = thresholded_neg_snr(jnp.maximum(residual_energy, 0.0), energy, snr_max_db)
    filled = first_fills[:, None, :] | second_fills[None, :, :]  # [P1, P2, K]
    loss = jnp.where(jnp.any(needed & ~filled, axis=-1), jnp.inf, loss)
    return jnp.argmin(loss.reshape(-1))  # index p1 * P2 + p2

  num_pairs = num_first * second.shape[0]
  chunk = max(1, _SEARCH_CHUNK_FLOATS // (num_pairs * num_mixtures))
  best = jax.lax.map(search, (gram, cross, mixture_energy, required), batch_size=chunk)
  best_first, best_second = jnp.divmod(best, second.shape[0])
  return first[best_first] + second[best_second]


def remix(mixing: jax.Array, estimates: jax.Array, precision=None) -> jax.Array:
  """``mixing [B, K, M]`` applied to ``estimates [B, M, ...]``: the K remixed ``[B, K, ...]``.

  The one remix of the graph (the loss, and the MixIT task's MoM and stem estimates);
  ``scoring.remix`` is its numpy twin for whole songs, from labels
  (tests/losses/test_mixit.py checks that they agree).
  """
  return jnp.einsum("bkm,bm...->bk...", mixing, estimates, precision=precision)


def mixture_consistency(
  estimates: jax.Array, mixture: jax.Array, weights: jax.Array | None = None
) -> jax.Array:
  """Projects estimates so that they sum exactly to the mixture (Wisdom et al. 2019).

  ŝ'_m = ŝ_m + w_m (x − Σ_n ŝ_n) with Σ_m w_m = 1: the least-squares projection onto
  {Σ ŝ = x} when w_m = 1/M (the default), its weighted form otherwise.

  Args:
    estimates: ``[batch, M, time]`` or ``[batch, M, channels, time]``.
    mixture: ``[batch, time]`` or ``[batch, channels, time]``.
    weights: optional non-negative ``[batch, M]``, or any shape broadcastable to
      ``estimates``; normalised over M here. The paper's power weighting is
      ``weights=jnp.mean(estimates**2, axis=-1)`` (per channel) or ``axis=(-2, -1)``.
      Where the weights of an example sum to 0 the uniform 1/M is used.

  Returns:
    Estimates of the same shape whose sum over M equals ``mixture``.

  ``stitching.share_residual`` is its numpy twin for whole songs (the unweighted case, one
  example; tests/losses/test_mixit.py checks that they agree).
  """
  if mixture.shape != estimates.shape[:1] + estimates.shape[2:]:
    raise ValueError(
      "mixture_consistency expects estimates [batch, M, (channels,) time] and mixture "
      f"[batch, (channels,) time]; got estimates {estimates.shape}, mixture {mixture.shape}"
    )
  num_estimates = estimates.shape[1]
  residual = jnp.expand_dims(mixture - jnp.sum(estimates, axis=1), 1)
  if weights is None:
    return estimates + residual / num_estimates
  weights = jnp.asarray(weights, estimates.dtype)
  if weights.ndim == 2:
    weights = weights.reshape(weights.shape + (1,) * (estimates.ndim - 2))
  total = jnp.sum(weights, axis=1, keepdims=True)
  safe_total = jnp.where(total > 0, total, 1.0)
  weights = jnp.where(total > 0, weights / safe_total, 1.0 / num_estimates)
  return estimates + weights * residual
