"""MixIT: the inner-product search against brute force on full signals, and its edge cases."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from mixit_reference import all_mixing_matrices, mixit_loss_bruteforce

from trackformer_jax.losses import mixit

# Short signals keep brute force (K^M remixes of the full signals) fast; jitted functions,
# so that each (K, M, layout) compiles once. Batch 4: a vmapped search over fewer examples
# hid a wrong compilation (see test_batched_search_equals_per_example).
TIME = 64
BATCH = 4
mixit_loss = jax.jit(mixit.mixit_loss)
bruteforce = jax.jit(mixit_loss_bruteforce)
assignment_matrices, mixture_consistency = mixit.assignment_matrices, mixit.mixture_consistency


def _random(shape, seed):
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _separable_case(num_mixtures, num_estimates, seed, channels=(), noise=0.05):
  """Mixtures built from sources, estimates = shuffled noisy sources: one clear best assignment."""
  rng = np.random.default_rng(seed)
  sources = rng.standard_normal((2, num_estimates, *channels, TIME))
  labels = np.stack([rng.permutation(np.arange(num_estimates) % num_mixtures) for _ in range(2)])
  mixing = np.eye(num_mixtures)[labels].transpose(0, 2, 1)  # [2, K, M]
  mixtures = np.einsum("bkm,bm...->bk...", mixing, sources)
  estimates = sources + noise * rng.standard_normal(sources.shape)
  return jnp.asarray(estimates, jnp.float32), jnp.asarray(mixtures, jnp.float32), mixing


def test_mixing_matrices_enumerate_every_assignment():
  for k, m in [(2, 3), (4, 2), (3, 4)]:
    fast = np.asarray(assignment_matrices(k, m))
    brute = all_mixing_matrices(k, m)
    assert fast.shape == brute.shape == (k**m, k, m)
    assert np.all(fast.sum(axis=1) == 1) and np.all(brute.sum(axis=1) == 1)
    as_set = lambda a: {x.tobytes() for x in a.astype(np.float32)}  # noqa: E731
    assert as_set(fast) == as_set(brute) and len(as_set(fast)) == k**m


def test_bruteforce_reference_matches_a_python_loop():
  """The reference itself against the definition written as nested Python loops."""
  estimates, mixtures = _random((2, 3, TIME), 0), _random((2, 2, TIME), 1)
  loss, mixing = bruteforce(estimates, mixtures, snr_max_db=30.0)
  s, y = np.asarray(estimates, np.float64), np.asarray(mixtures, np.float64)
  for b in range(2):
    best = np.inf
    for labels in itertools.product(range(2), repeat=3):
      total = 0.0
      for k in range(2):
        remix = sum(s[b, m] for m in range(3) if labels[m] == k)
        err, energy = np.sum((y[b, k] - remix) ** 2), np.sum(y[b, k] ** 2)
        total += 10 * np.log10(err + 1e-3 * energy + 1e-8) - 10 * np.log10(energy + 1e-8)
      if total < best:
        best, best_labels = total, labels
    np.testing.assert_allclose(loss[b], best, atol=1e-4)
    np.testing.assert_array_equal(np.argmax(mixing[b], axis=0), best_labels)


@pytest.mark.parametrize("num_mixtures", [2, 4])
@pytest.mark.parametrize("num_estimates", [2, 3, 4, 8])
def test_equals_bruteforce(num_mixtures, num_estimates):
  for estimates, mixtures in [
    (_random((BATCH, num_estimates, TIME), 2), _random((BATCH, num_mixtures, TIME), 3)),
    _separable_case(num_mixtures, num_estimates, seed=4)[:2],
  ]:
    loss, mixing = mixit_loss(estimates, mixtures)
    ref_loss, ref_mixing = bruteforce(estimates, mixtures)
    assert loss.shape == (estimates.shape[0],)
    assert mixing.shape == (estimates.shape[0], num_mixtures, num_estimates)
    np.testing.assert_allclose(loss, ref_loss, atol=1e-4)
    np.testing.assert_array_equal(mixing, ref_mixing)


def test_finds_the_true_assignment_and_reaches_the_snr_cap():
  estimates, mixtures, true_mixing = _separable_case(4, 8, seed=5)
  np.testing.assert_array_equal(mixit_loss(estimates, mixtures)[1], true_mixing)
  # Estimates that remix exactly into the mixtures score the cap, -K * snr_max_db.
  exact, mixtures, true_mixing = _separable_case(4, 8, seed=5, noise=0.0)
  for snr_max_db in (10.0, 30.0):
    loss, mixing = mixit_loss(exact, mixtures, snr_max_db=snr_max_db)
    np.testing.assert_allclose(loss, -4 * snr_max_db * np.ones(2), atol=1e-3)
    np.testing.assert_array_equal(mixing, true_mixing)


@pytest.mark.parametrize(("num_mixtures", "num_estimates"), [(2, 8), (4, 8), (4, 7), (3, 5)])
def test_batched_search_equals_per_example(num_mixtures, num_estimates):
  """The jitted search over a batch of 8 against one example at a time and against an exact
  float64 ranking of every assignment: the guard against the two-dot miscompilation of a
  batched search (docs/history.md)."""
  estimates = _random((8, num_estimates, TIME), 21)
  mixtures = _random((8, num_mixtures, TIME), 22)
  loss, mixing = mixit_loss(estimates, mixtures)
  matrices = all_mixing_matrices(num_mixtures, num_estimates).astype(np.float64)
  for b in range(8):
    one_loss, one_mixing = mixit_loss(estimates[b : b + 1], mixtures[b : b + 1])
    np.testing.assert_array_equal(mixing[b], one_mixing[0])
    np.testing.assert_allclose(loss[b], one_loss[0], atol=1e-5)
    s, y = np.asarray(estimates[b], np.float64), np.asarray(mixtures[b], np.float64)
    residual = y[None] - np.einsum("pkm,mt->pkt", matrices, s)
    energy = np.sum(y**2, axis=-1)
    exact = np.sum(
      10 * np.log10(np.sum(residual**2, -1) + 1e-3 * energy + 1e-8) - 10 * np.log10(energy + 1e-8),
      axis=-1,
    )
    np.testing.assert_array_equal(mixing[b], matrices[np.argmin(exact)])


@pytest.mark.parametrize("num_mixtures", [2, 4])
def test_gradients_equal_bruteforce(num_mixtures):
  estimates, mixtures = _random((2, 8, TIME), 7), _random((2, num_mixtures, TIME), 8)

  def total(fn):
    return lambda s: jnp.sum(fn(s, mixtures)[0])

  grad = jax.grad(total(mixit_loss))(estimates)
  ref_grad = jax.grad(total(bruteforce))(estimates)
  np.testing.assert_allclose(grad, ref_grad, rtol=1e-4, atol=1e-6)


def test_stereo_axis():
  estimates, mixtures, true_mixing = _separable_case(2, 8, seed=9, channels=(2,))
  loss, mixing = mixit_loss(estimates, mixtures)
  np.testing.assert_array_equal(mixing, true_mixing)
  ref_loss, ref_mixing = bruteforce(estimates, mixtures)
  np.testing.assert_allclose(loss, ref_loss, atol=1e-4)
  np.testing.assert_array_equal(mixing, ref_mixing)
  # Channels are part of the signal: same as concatenating them along time.
  flat_loss, flat_mixing = mixit_loss(
    estimates.reshape(2, 8, 2 * TIME), mixtures.reshape(2, 2, 2 * TIME)
  )
  np.testing.assert_allclose(loss, flat_loss, atol=1e-5)
  np.testing.assert_array_equal(mixing, flat_mixing)
  # Random stereo data, K = 4, against brute force too.
  estimates, mixtures = _random((2, 4, 2, TIME), 10), _random((2, 4, 2, TIME), 11)
  np.testing.assert_allclose(
    mixit_loss(estimates, mixtures)[0], bruteforce(estimates, mixtures)[0], atol=1e-4
  )


@pytest.mark.parametrize(
  "silent",
  ["mixtures", "estimates", "both", "one_mixture"],
)
def test_silence_gives_finite_loss_and_gradients(silent):
  estimates, mixtures = _random((2, 8, 2, TIME), 12), _random((2, 4, 2, TIME), 13)
  if silent in ("mixtures", "both"):
    mixtures = jnp.zeros_like(mixtures)
  if silent in ("estimates", "both"):
    estimates = jnp.zeros_like(estimates)
  if silent == "one_mixture":
    mixtures = mixtures.at[:, 1].set(0.0)
  loss, mixing = mixit_loss(estimates, mixtures)
  grads = jax.grad(lambda s, y: jnp.sum(mixit_loss(s, y)[0]), argnums=(0, 1))(estimates, mixtures)
  assert np.all(np.isfinite(loss))
  assert all(np.all(np.isfinite(g)) for g in grads)
  np.testing.assert_array_equal(np.sum(mixing, axis=1), np.ones((2, 8)))
  if silent == "both":
    np.testing.assert_allclose(loss, 0.0, atol=1e-4)


@pytest.mark.parametrize(("num_mixtures", "num_estimates"), [(4, 8), (3, 5)])
def test_required_mixtures_each_get_an_estimate(num_mixtures, num_estimates):
  """The constrained search against every allowed assignment scored on the full signals."""
  rng = np.random.default_rng(31)
  mixtures = rng.standard_normal((BATCH, num_mixtures, TIME))
  mixtures[:, -1] *= 0.01  # quiet and unrelated to every estimate: best left empty when free
  # Scaled copies of the loud mixtures, and one estimate of unrelated noise.
  copies = mixtures[:, np.arange(num_estimates - 1) % (num_mixtures - 1)]
  copies = copies * rng.uniform(0.2, 1.0, (BATCH, num_estimates - 1, 1))
  estimates = np.concatenate([copies, rng.standard_normal((BATCH, 1, TIME))], axis=1)
  estimates, mixtures = jnp.asarray(estimates, jnp.float32), jnp.asarray(mixtures, jnp.float32)
  required = np.ones((BATCH, num_mixtures), bool)
  required[1, -1] = False  # this example may leave the quiet mixture empty
  _, free = mixit_loss(estimates, mixtures)
  loss, forced = mixit_loss(estimates, mixtures, 30.0, jnp.asarray(required))
  assert not np.asarray(free)[:, -1].any()  # the free search does leave it empty
  np.testing.assert_array_equal(np.asarray(forced).any(axis=-1), np.asarray(free).any(axis=-1)
                                | required)  # fmt: skip
  np.testing.assert_array_equal(forced[1], free[1])
  matrices = all_mixing_matrices(num_mixtures, num_estimates)  # [P, K, M]
  s, y = np.asarray(estimates, np.float64), np.asarray(mixtures, np.float64)
  for b in range(BATCH):
    residual = np.sum((y[b][None] - np.einsum("pkm,mt->pkt", matrices, s[b])) ** 2, axis=-1)
    energy = np.sum(y[b] ** 2, axis=-1)
    losses = np.sum(
      10 * np.log10(residual + 1e-3 * energy + 1e-8) - 10 * np.log10(energy + 1e-8), -1
    )
    allowed = (matrices.any(axis=-1) | ~required[b]).all(axis=-1)
    np.testing.assert_allclose(loss[b], losses[allowed].min(), atol=1e-3)


def test_required_beyond_the_estimates_is_ignored():
  estimates, mixtures = _random((BATCH, 2, TIME), 41), _random((BATCH, 4, TIME), 42)
  free = mixit_loss(estimates, mixtures)
  forced = mixit_loss(estimates, mixtures, 30.0, jnp.ones((BATCH, 4), bool))
  np.testing.assert_array_equal(forced[1], free[1])
  np.testing.assert_allclose(forced[0], free[0])
  with pytest.raises(ValueError, match="required"):
    mixit.mixit_loss(estimates, mixtures, 30.0, jnp.ones((BATCH, 3), bool))


def test_each_column_has_exactly_one_one():
  _, mixing = mixit_loss(_random((BATCH, 8, TIME), 14), _random((BATCH, 4, TIME), 15))
  mixing = np.asarray(mixing)
  assert set(np.unique(mixing)) <= {0.0, 1.0}
  np.testing.assert_array_equal(mixing.sum(axis=1), np.ones((BATCH, 8)))


@pytest.mark.parametrize("num_mixtures", [2, 4])
def test_permuting_estimates_permutes_columns(num_mixtures):
  estimates, mixtures = _random((BATCH, 8, TIME), 16), _random((BATCH, num_mixtures, TIME), 17)
  loss, mixing = mixit_loss(estimates, mixtures)
  for seed in range(3):
    perm = np.random.default_rng(seed).permutation(8)
    perm_loss, perm_mixing = mixit_loss(estimates[:, perm], mixtures)
    np.testing.assert_allclose(perm_loss, loss, atol=1e-5)
    np.testing.assert_array_equal(perm_mixing, np.asarray(mixing)[:, :, perm])


def test_search_memory_does_not_grow_with_length():
  """K = 4, M = 8: a K^M x time intermediate would be 65,536 x 4 x 48,000 floats (50 GB)."""
  time = 48_000
  spec = (
    jax.ShapeDtypeStruct((1, 8, time), jnp.float32),
    jax.ShapeDtypeStruct((1, 4, time), jnp.float32),
  )
  compiled = jax.jit(jax.grad(lambda s, y: mixit_loss(s, y)[0].sum())).lower(*spec).compile()
  memory = compiled.memory_analysis()
  if memory is None:  # some backends do not report; the CPU backend used in CI does
    pytest.fail("memory_analysis() unavailable on this backend")
  assert memory.temp_size_in_bytes < 256 * 2**20


def test_jit_does_not_retrace():
  traces = []

  @jax.jit
  def loss_fn(s, y):
    traces.append(None)
    return mixit_loss(s, y)[0]

  for seed in range(3):
    loss_fn(_random((2, 8, TIME), seed), _random((2, 2, TIME), seed + 1))
  assert len(traces) == 1


def test_rejects_bad_layouts():
  with pytest.raises(ValueError, match="batch, M"):
    mixit_loss(jnp.zeros((8, TIME)), jnp.zeros((2, TIME)))
  with pytest.raises(ValueError, match="share batch"):
    mixit_loss(jnp.zeros((2, 8, TIME)), jnp.zeros((2, 2, TIME + 1)))


@pytest.mark.parametrize("channels", [(), (2,)])
def test_mixture_consistency_sums_to_mixture(channels):
  estimates = _random((3, 8, *channels, TIME), 18)
  mixture = _random((3, *channels, TIME), 19)
  projected = mixture_consistency(estimates, mixture)
  np.testing.assert_allclose(projected.sum(axis=1), mixture, atol=1e-5)
  # Uniform weights: every estimate moves by the same (mixture - sum) / M.
  shift = (mixture - estimates.sum(axis=1)) / 8
  np.testing.assert_allclose(
    projected - estimates, jnp.broadcast_to(shift[:, None], estimates.shape), atol=1e-5
  )
  # Weighted: still sums to the mixture; a zero weight leaves that estimate unchanged.
  weights = jnp.abs(_random((3, 8), 20)).at[:, 0].set(0.0)
  weighted = mixture_consistency(estimates, mixture, weights)
  np.testing.assert_allclose(weighted.sum(axis=1), mixture, atol=1e-5)
  np.testing.assert_allclose(weighted[:, 0], estimates[:, 0], atol=1e-6)
  # All-zero weights fall back to uniform.
  np.testing.assert_allclose(
    mixture_consistency(estimates, mixture, jnp.zeros((3, 8))), projected, atol=1e-6
  )
  # Estimates that already sum to the mixture are a fixed point.
  np.testing.assert_allclose(mixture_consistency(projected, mixture), projected, atol=1e-5)


def test_mixture_consistency_rejects_bad_layouts():
  with pytest.raises(ValueError, match="batch, M"):
    mixture_consistency(jnp.zeros((2, 8, TIME)), jnp.zeros((2, 2, TIME)))


def test_numpy_twins_agree_with_the_graph():
  """scoring.remix and stitching.share_residual (numpy, whole songs) are the one-example
  twins of mixit.remix and mixit.mixture_consistency."""
  from trackformer_jax import scoring, stitching

  outputs = np.asarray(_random((6, 2, TIME), 30))
  labels = np.array([2, 0, 0, 3, 2, 0])  # reference 1 gets nothing: silent
  mixing = np.eye(4, dtype=np.float32)[labels].T  # [K, N]
  np.testing.assert_allclose(
    scoring.remix(outputs, labels, 4), mixit.remix(mixing[None], outputs[None])[0], atol=1e-6
  )
  mixture = np.asarray(_random((2, TIME), 31))
  np.testing.assert_allclose(
    stitching.share_residual(outputs, mixture),
    mixture_consistency(jnp.asarray(outputs)[None], jnp.asarray(mixture)[None])[0],
    atol=1e-6,
  )
