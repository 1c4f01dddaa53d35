"""The configured task's train and eval steps, compiled on the mesh, and evaluation.

One step signature for every task: ``train_step(state, batch, rng) -> (state, metrics)``,
under ``jax.jit`` with explicit shardings (batch split over ``data``, the rest replicated)
and the state donated; XLA inserts the gradient all-reduce.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from trackformer_jax.training import state as state_lib
from trackformer_jax.training import tasks


def train_step(
  state: state_lib.TrainState,
  batch: Mapping[str, jax.Array],
  rng: jax.Array,
  *,
  model: nn.Module,
  optimizer: optax.GradientTransformation,
  config: ml_collections.ConfigDict,
) -> tuple[state_lib.TrainState, dict[str, jax.Array]]:
  """One AdamW step on the task's loss; a non-finite loss or gradient leaves params untouched.

  Args:
    state: the current state.
    batch: the task's ``TRAIN_FIELDS`` (MixIT: ``mom`` [B, C, T], ``mixtures``
      [B, 2, C, T]), global arrays split over ``data``.
    rng: the key of this step (dropout; Audio-MAE's masks too).

  Returns:
    (new state, metrics): scalars ``loss``, the task's loss parts, ``grad_norm`` (before
    clipping), ``learning_rate``, ``skipped`` (1.0 when the update was dropped),
    ``nonfinite_steps`` and ``consecutive_nonfinite``.
  """
  task = tasks.get_task(config)
  grad_fn = jax.value_and_grad(task.training_loss, has_aux=True)
  (loss, parts), grads = grad_fn(state.params, model, batch, rng, config)
  new_state, step_metrics = state_lib.apply_gradients(state, loss, grads, optimizer, config)
  return new_state, {"loss": loss, **parts, **step_metrics}


def compile_train_step(
  config: ml_collections.ConfigDict,
  model: nn.Module,
  optimizer: optax.GradientTransformation,
  mesh: Mesh,
) -> Callable[[state_lib.TrainState, Mapping[str, jax.Array], jax.Array], tuple[Any, dict]]:
  """``train_step`` under ``jax.jit`` with explicit shardings; the state is donated.

  The batch's leading axis is split over ``data`` and everything else is replicated, so one
  device, one GPU and many devices (and hosts) run the same program.
  """
  replicated = NamedSharding(mesh, P())
  batch_split = NamedSharding(mesh, P("data"))

  def step(state, batch, rng):
    return train_step(state, batch, rng, model=model, optimizer=optimizer, config=config)

  return jax.jit(
    step,
    in_shardings=(replicated, batch_split, replicated),
    out_shardings=(replicated, replicated),
    donate_argnums=(0,),
  )


def compile_eval_step(
  config: ml_collections.ConfigDict, model: nn.Module, mesh: Mesh
) -> Callable[[Any, Mapping[str, jax.Array], jax.Array], dict[str, jax.Array]]:
  """The task's ``eval_step(params, batch, key)`` jitted; its scores come back replicated.

  Replicated, not split over ``data``: every host can then read every example's scores from
  its own devices (``device_get`` refuses an array spanning hosts).
  """
  task = tasks.get_task(config)
  replicated = NamedSharding(mesh, P())
  return jax.jit(
    lambda params, batch, key: task.eval_step(params, batch, key, model=model, config=config),
    in_shardings=(replicated, NamedSharding(mesh, P("data")), replicated),
    out_shardings=replicated,
  )


def evaluation_key(config: ml_collections.ConfigDict, batch_index: int) -> jax.Array:
  """The key of validation batch ``batch_index``: fixed, so every evaluation compares."""
  return jax.random.fold_in(jax.random.PRNGKey(config.seed), 2**31 - 1 - batch_index)


def evaluate(
  params: Any,
  eval_fn: Callable,
  batches: Iterable[dict[str, np.ndarray]],
  mesh: Mesh,
  config: ml_collections.ConfigDict,
  progress: Callable[[int], None] | None = None,
) -> dict[str, float]:
  """The task's ``summarize_eval`` of ``eval_fn`` over ``batches``; {} when there are none.

  ``progress(done)`` is called after each batch (it may raise to stop the evaluation).

  Each host passes its own examples; padded examples (to a multiple of the local devices)
  carry weight 0 and drop out of the averages.
  """
  task = tasks.get_task(config)
  per_example, weights = [], []
  for index, batch in enumerate(batches):
    fields = batch if task.EVAL_FIELDS is None else {n: batch[n] for n in task.EVAL_FIELDS}
    padded, w = state_lib.pad_batch(fields, jax.local_device_count())
    # The weights travel with the batch so that, with several hosts, each example's weight
    # comes back beside its scores in the gathered (replicated) output.
    global_batch = state_lib.to_global({**padded, "eval_weight": w}, mesh)
    scores = eval_fn(params, global_batch, evaluation_key(config, index))
    scores = {name: state_lib.host_value(value) for name, value in scores.items()}
    weights.append(scores.pop("eval_weight"))
    per_example.append(scores)
    if progress is not None:
      progress(index + 1)
  return task.summarize_eval(per_example, weights) if per_example else {}
