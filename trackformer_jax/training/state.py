"""The train state, the optimiser, the mesh and the host-side plumbing onto it.

A one-axis ``data`` mesh spans every device: batches are split over it, everything else is
replicated, so one CPU, one GPU and many hosts run the same program.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from trackformer_jax.training import tasks
from trackformer_jax.training.config_files import segment_samples


@flax.struct.dataclass
class TrainState:
  """Everything a step changes; arrays only, so it checkpoints and shards as one pytree.

  Attributes:
    step: int32 [], the number of steps taken (skipped ones included).
    params: the model's parameters.
    opt_state: the optimiser's state.
    rng: uint32 [2], the run's base key; step s uses ``fold_in(rng, s)`` (dropout, masks).
    nonfinite_steps: int32 [], how many steps were skipped for a non-finite loss or gradient.
    consecutive_nonfinite: int32 [], the length of the current run of skipped steps.
    ema_params: the exponential moving average of ``params`` (``config.ema_decay``), or None
      when the run keeps none. Evaluation, the best checkpoint and the tools use it.
  """

  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array
  nonfinite_steps: jax.Array
  consecutive_nonfinite: jax.Array
  ema_params: Any = None

  @property
  def eval_params(self) -> Any:
    """The weights to evaluate and serve: the moving average when the run keeps one."""
    return self.params if self.ema_params is None else self.ema_params


def learning_rate_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
  """Linear warm-up from 0 to ``learning_rate``, then cosine down to ``end_learning_rate``."""
  warmup = min(int(config.warmup_steps), int(config.num_train_steps))
  schedule = optax.warmup_cosine_decay_schedule(
    init_value=0.0,
    peak_value=config.learning_rate,
    warmup_steps=warmup,
    decay_steps=max(int(config.num_train_steps), warmup + 1),
    end_value=config.end_learning_rate,
  )
  # Read one step ahead: the warm-up starts at 0, and the first update should not be wasted
  # on a learning rate of exactly zero.
  return lambda count: schedule(count + 1)


def ema_decay_at(config: ml_collections.ConfigDict, step: jax.Array) -> jax.Array:
  """``config.ema_decay``, held lower over the first steps: ``min(decay, (1+s)/(10+s))``.

  Without the ramp the average would still remember the random initialisation long after
  training moved away from it (at 0.995, 0.995^500 ≈ 8 % of it after 500 steps).
  """
  step = jnp.asarray(step, jnp.float32)
  return jnp.minimum(config.ema_decay, (1.0 + step) / (10.0 + step))


def _decay_mask(params: Any) -> Any:
  # Weight decay on matrices and kernels only: decaying biases and norm scales towards zero
  # only fights the normalisation and is the usual AdamW practice to leave out.
  return jax.tree.map(lambda leaf: leaf.ndim >= 2, params)


def create_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  return optax.chain(
    optax.clip_by_global_norm(config.grad_clip_norm),
    optax.adamw(learning_rate_schedule(config), weight_decay=config.weight_decay, mask=_decay_mask),
  )


def create_train_state(
  config: ml_collections.ConfigDict, model: nn.Module, optimizer: optax.GradientTransformation
) -> TrainState:
  """A fresh state from ``config.seed`` (params, optimiser state, base key, counters)."""
  root = jax.random.PRNGKey(config.seed)
  init_key, train_key = jax.random.split(root)
  sample = jnp.zeros((1, config.channels, segment_samples(config)), jnp.float32)
  params = model.init({"params": init_key, "dropout": init_key}, sample, deterministic=True)[
    "params"
  ]
  return TrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    opt_state=optimizer.init(params),
    rng=train_key,
    nonfinite_steps=jnp.zeros((), jnp.int32),
    consecutive_nonfinite=jnp.zeros((), jnp.int32),
    ema_params=params if config.get("ema_decay", 0.0) > 0 else None,
  )


def init_train_state(
  config: ml_collections.ConfigDict,
  model: nn.Module,
  optimizer: optax.GradientTransformation,
  mesh: Mesh,
) -> TrainState:
  """``create_train_state`` compiled, its arrays replicated over ``mesh``.

  Compiled rather than run op by op: eagerly, initialising even a tiny model takes many
  seconds of dispatch.
  """
  create = jax.jit(
    lambda: create_train_state(config, model, optimizer), out_shardings=NamedSharding(mesh, P())
  )
  return create()


def all_finite(tree: Any) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)]
  return jnp.stack(leaves).all()


def apply_gradients(
  state: TrainState,
  loss: jax.Array,
  grads: Any,
  optimizer: optax.GradientTransformation,
  config: ml_collections.ConfigDict,
) -> tuple[TrainState, dict[str, jax.Array]]:
  """The state after one optimiser step, or with only its counters moved if it is not finite.

  Shared by every task. Also advances the weights' moving average, when the state keeps one.

  Returns:
    (new state, metrics): ``grad_norm`` (before clipping), ``learning_rate``, ``skipped``,
    ``nonfinite_steps`` and ``consecutive_nonfinite``.
  """
  finite = jnp.isfinite(loss) & all_finite(grads)
  updates, new_opt_state = optimizer.update(grads, state.opt_state, state.params)
  new_params = optax.apply_updates(state.params, updates)
  # A select, not a cond: both branches are cheap next to the step, and the step stays one
  # straight-line program that XLA can fuse.
  keep = lambda new, old: jnp.where(finite, new, old)  # noqa: E731
  new_params = jax.tree.map(keep, new_params, state.params)
  ema_params = state.ema_params
  if ema_params is not None:
    decay = ema_decay_at(config, state.step)
    averaged = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema_params, new_params)
    ema_params = jax.tree.map(keep, averaged, ema_params)
  consecutive = jnp.where(finite, 0, state.consecutive_nonfinite + 1)
  new_state = state.replace(
    step=state.step + 1,
    params=new_params,
    ema_params=ema_params,
    opt_state=jax.tree.map(keep, new_opt_state, state.opt_state),
    nonfinite_steps=state.nonfinite_steps + (~finite).astype(jnp.int32),
    consecutive_nonfinite=consecutive.astype(jnp.int32),
  )
  metrics = {
    "grad_norm": optax.tree.norm(grads),
    "learning_rate": learning_rate_schedule(config)(state.step),
    "skipped": (~finite).astype(jnp.float32),
    "nonfinite_steps": new_state.nonfinite_steps,
    "consecutive_nonfinite": new_state.consecutive_nonfinite,
  }
  return new_state, metrics


def create_mesh(devices: list[jax.Device] | None = None) -> Mesh:
  """A one-axis mesh named ``data`` over ``devices`` (default: every device of every host)."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), ("data",))


def abstract_train_inputs(
  config: ml_collections.ConfigDict,
  model: nn.Module,
  optimizer: optax.GradientTransformation,
  mesh: Mesh,
) -> tuple[TrainState, dict[str, jax.ShapeDtypeStruct], jax.ShapeDtypeStruct]:
  """(state, batch, rng) as ``jax.ShapeDtypeStruct``s with shardings: lowering needs no data."""
  replicated = NamedSharding(mesh, P())
  batch_split = NamedSharding(mesh, P("data"))
  state_shape = jax.eval_shape(lambda: create_train_state(config, model, optimizer))
  state = jax.tree.map(
    lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=replicated), state_shape
  )
  length = segment_samples(config)
  batch = {
    "mom": jax.ShapeDtypeStruct(
      (config.batch_size, config.channels, length), jnp.float32, sharding=batch_split
    ),
    "mixtures": jax.ShapeDtypeStruct(
      (config.batch_size, 2, config.channels, length), jnp.float32, sharding=batch_split
    ),
  }
  # A task whose steps read more fields (e.g. a second, labelled source) names their shapes.
  extra = getattr(tasks.get_task(config), "extra_batch_shapes", None)
  for name, shape in (extra(config) if extra else {}).items():
    batch[name] = jax.ShapeDtypeStruct(shape, jnp.float32, sharding=batch_split)
  rng = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=replicated)
  return state, batch, rng


def pad_batch(batch: Mapping[str, np.ndarray], multiple: int) -> tuple[dict, np.ndarray]:
  """Pads the leading axis to a multiple of the device count; returns (batch, weights [B'])."""
  size = len(batch["mom"])
  padded = -(-size // multiple) * multiple
  weights = np.zeros(padded, np.float32)
  weights[:size] = 1.0
  if padded == size:
    return dict(batch), weights
  # Repeat real examples (not zeros) so padded rows stay numerically harmless; weight 0 drops
  # them from the averages.
  index = np.arange(padded) % size
  return {name: np.asarray(value)[index] for name, value in batch.items()}, weights


def host_value(value: Any) -> np.ndarray:
  """A replicated array's value on this host (``device_get`` refuses arrays spanning hosts)."""
  if isinstance(value, jax.Array):
    return np.asarray(value.addressable_data(0))
  return np.asarray(value)


def to_global(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Host batch -> global arrays split over ``data``.

  Each host passes its own slice of the global batch (the input pipeline shards per host).
  """
  sharding = NamedSharding(mesh, P("data"))
  return {
    name: jax.make_array_from_process_local_data(sharding, np.asarray(value))
    for name, value in batch.items()
  }
