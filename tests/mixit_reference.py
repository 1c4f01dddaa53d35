"""The brute-force MixIT reference the tests compare ``losses.mixit.mixit_loss`` with.

Written from the definition and independently of the package (its own enumeration by
``itertools.product``, its own objective): it remixes the full signals for every assignment.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np

_EPS = 1e-8


def all_mixing_matrices(num_mixtures: int, num_estimates: int) -> np.ndarray:
  """Every ``[K, M]`` 0/1 matrix with one 1 per column, listed by ``itertools.product``."""
  eye = np.eye(num_mixtures, dtype=np.float32)
  return np.stack(
    [eye[list(labels)].T for labels in itertools.product(range(num_mixtures), repeat=num_estimates)]
  )


def mixit_loss_bruteforce(
  estimates: jax.Array, mixtures: jax.Array, snr_max_db: float = 30.0, chunk: int = 16
) -> tuple[jax.Array, jax.Array]:
  """The MixIT definition, literally: remix the full signals for every mixing matrix.

  Same arguments and results as ``mixit_loss``. For each of the K^M matrices A it forms
  ŷ = A·s on the whole signals and evaluates
  Σ_k 10·log10(‖y_k − ŷ_k‖² + τ‖y_k‖² + ε) − 10·log10(‖y_k‖² + ε), then keeps the
  lowest. ``chunk`` matrices are remixed at a time (memory: chunk · batch · K · samples).
  """
  estimates, mixtures = jnp.asarray(estimates), jnp.asarray(mixtures)
  batch, num_estimates, num_mixtures = estimates.shape[0], estimates.shape[1], mixtures.shape[1]
  estimates = estimates.reshape(batch, num_estimates, -1)
  mixtures = mixtures.reshape(batch, num_mixtures, -1)
  matrices = jnp.asarray(all_mixing_matrices(num_mixtures, num_estimates))
  tau = 10.0 ** (-snr_max_db / 10.0)
  mixture_energy = jnp.sum(mixtures**2, axis=-1)  # [batch, K]

  def loss_of(matrix):  # [K, M] -> [batch]
    remixed = jnp.einsum("km,bmt->bkt", matrix, estimates, precision=jax.lax.Precision.HIGHEST)
    residual_energy = jnp.sum((mixtures - remixed) ** 2, axis=-1)
    per_mixture = 10.0 * jnp.log10(residual_energy + tau * mixture_energy + _EPS)
    return jnp.sum(per_mixture - 10.0 * jnp.log10(mixture_energy + _EPS), axis=-1)

  losses = jax.lax.map(loss_of, matrices, batch_size=chunk)  # [K^M, batch]
  best = jnp.argmin(jax.lax.stop_gradient(losses), axis=0)
  return losses[best, jnp.arange(batch)], matrices[best]
