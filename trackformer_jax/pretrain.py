"""Audio-MAE pre-training (``config.task = "mae"``) and its transfer into the MixIT separator.

``python -m trackformer_jax.main --config=configs/mae_pretrain.py`` reaches
``pretrain_and_evaluate`` through ``train.train_and_evaluate``. The loop is MixIT training's
(same ``TrainState``, optimiser, mesh, checkpoints, metric writers, resume and step
reproducibility) with the masked reconstruction loss of ``models.mae.AudioMAE`` on the
training mixtures of mixtures (stems are never read). Each evaluation scores the validation
split with fixed masks (the same at every evaluation, so the curve compares like with like):
``reconstruction_loss`` (lower is better; the best checkpoint minimises it) and, as the
reference to beat, ``interpolation_loss``, the same loss of a straight line drawn across each
hidden gap from the visible frames' clean targets.

``transfer_encoder`` is what ``--config.init_from=<workdir>`` does in MixIT training: it
restores the pre-training run's ``encoder``, ``input_projection``, ``positional_conv`` and
``transformer`` subtrees through an orbax partial restore (the decoder, mask token and
prediction head are never read) into the freshly initialised separator's parameters; the
separator's own heads (``output_norm``, ``mask_head``, the learned decoder) stay fresh.
"""

from __future__ import annotations

import os
import pathlib
import time
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging
from flax import traverse_util
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from trackformer_jax import checkpoints, train
from trackformer_jax.losses import mae as mae_loss_lib
from trackformer_jax.models import mae as mae_lib

# Config fields that change what the transferred weights compute without changing their
# shapes (or change shapes in ways a name-by-name check reports less clearly).
_MATCHING_FIELDS = (
  "sample_rate_hz",
  "channels",
  "model.frontend",
  "model.n_fft",
  "model.hop",
  "model.encoder_window",
  "model.encoder_stride",
  "model.feature_seed",
)
PRETRAIN_COMMAND = "python -m trackformer_jax.main --config=configs/mae_pretrain.py"


def validate_mae_config(config: ml_collections.ConfigDict) -> None:
  """The MAE-specific checks; ``train.validate_config`` calls this for ``task = "mae"``."""
  if config.model.get("name") == "convtasnet":
    raise train.ConfigError(
      "config.model.name = 'convtasnet': Audio-MAE pre-trains the transformer separators"
    )
  try:
    mae_lib.check_mae_config(config.mae)
  except ValueError as error:
    raise train.ConfigError(str(error)) from None
  if config.get("init_from", ""):
    raise train.ConfigError(
      f"config.init_from = {config.init_from!r}: pre-training starts from scratch"
    )


# --------------------------------------------------------------------------------------------
# Loss, step and evaluation.


def mae_training_loss(
  params: Any, model: mae_lib.AudioMAE, batch: Mapping[str, jax.Array], rng: jax.Array
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Mean masked reconstruction loss of ``batch["mom"]`` [B, C, T] under fresh masks.

  ``rng`` is the step's key: split into the mask key and the dropout key.
  """
  mask_key, dropout_key = jax.random.split(rng)
  predictions, aux = model.apply(
    {"params": params},
    batch["mom"],
    mask_key,
    deterministic=False,
    rngs={"dropout": dropout_key},
  )
  per_example = mae_loss_lib.masked_reconstruction_loss(
    predictions, aux["targets"], aux["loss_mask"]
  )
  loss = jnp.mean(per_example)
  return loss, {"reconstruction": loss}


def mae_train_step(
  state: train.TrainState,
  batch: Mapping[str, jax.Array],
  rng: jax.Array,
  *,
  model: mae_lib.AudioMAE,
  optimizer: optax.GradientTransformation,
  config: ml_collections.ConfigDict,
) -> tuple[train.TrainState, dict[str, jax.Array]]:
  """As ``train.train_step`` (non-finite updates skipped), with the MAE loss."""
  grad_fn = jax.value_and_grad(mae_training_loss, has_aux=True)
  (loss, parts), grads = grad_fn(state.params, model, batch, rng)
  new_state, step_metrics = train.apply_gradients(state, loss, grads, optimizer, config)
  return new_state, {"loss": loss, **parts, **step_metrics}


def compile_mae_train_step(config, model, optimizer, mesh):
  """``mae_train_step`` jitted with explicit shardings (batch split, rest replicated)."""
  replicated = NamedSharding(mesh, P())

  def step(state, batch, rng):
    return mae_train_step(state, batch, rng, model=model, optimizer=optimizer, config=config)

  return jax.jit(
    step,
    in_shardings=(replicated, NamedSharding(mesh, P("data")), replicated),
    out_shardings=(replicated, replicated),
    donate_argnums=(0,),
  )


def mae_eval_step(
  params: Any, batch: Mapping[str, jax.Array], mask_key: jax.Array, *, model: mae_lib.AudioMAE
) -> dict[str, jax.Array]:
  """Per-example ``reconstruction_loss`` [B] and ``interpolation_loss`` [B] of ``batch["mom"]``."""
  predictions, aux = model.apply({"params": params}, batch["mom"], mask_key, deterministic=True)
  interpolated = mae_loss_lib.interpolate_from_visible(aux["targets"], ~aux["hidden"])
  score = lambda estimate: mae_loss_lib.masked_reconstruction_loss(  # noqa: E731
    estimate, aux["targets"], aux["loss_mask"]
  )
  return {"reconstruction_loss": score(predictions), "interpolation_loss": score(interpolated)}


def evaluation_mask_key(config: ml_collections.ConfigDict, batch_index: int) -> jax.Array:
  """The mask key of validation batch ``batch_index``: fixed, so every evaluation compares."""
  return jax.random.fold_in(jax.random.PRNGKey(config.seed), 2**31 - 1 - batch_index)


def evaluate_mae(params, eval_fn, batches, mesh, config) -> dict[str, float]:
  """Means of ``mae_eval_step`` over the validation batches (padded examples dropped)."""
  totals: dict[str, float] = {}
  weight_sum = 0.0
  for index, batch in enumerate(batches):
    padded, weights = train._pad_batch({"mom": batch["mom"]}, jax.local_device_count())
    scores = jax.device_get(
      eval_fn(params, train._to_global(padded, mesh), evaluation_mask_key(config, index))
    )
    for name, values in scores.items():
      totals[name] = totals.get(name, 0.0) + float(np.sum(np.asarray(values) * weights))
    weight_sum += float(weights.sum())
  if not weight_sum:
    return {}
  return {name: total / weight_sum for name, total in totals.items()}


# --------------------------------------------------------------------------------------------
# The loop.


def pretrain_and_evaluate(
  config: ml_collections.ConfigDict,
  workdir: str | os.PathLike,
  *,
  stop_after_step: int | None = None,
) -> train.TrainState:
  """Pre-trains ``config`` into ``workdir`` (resuming from its newest checkpoint).

  Arguments and files as ``train.train_and_evaluate``; the state's params are the AudioMAE's.
  """

  workdir = pathlib.Path(workdir)
  mesh = train.create_mesh()
  train.validate_config(config, num_devices=mesh.devices.size)
  train._prepare_workdir(workdir)
  lock = train._lock_workdir(workdir) if jax.process_index() == 0 else None
  try:
    return _pretrain_holding_lock(config, workdir, mesh, stop_after_step)
  finally:
    # As in train: released on any error too, so a corrected retry is not refused.
    if lock is not None:
      lock.close()


def _pretrain_holding_lock(
  config: ml_collections.ConfigDict,
  workdir: pathlib.Path,
  mesh: Any,
  stop_after_step: int | None,
) -> train.TrainState:
  from trackformer_jax import input_pipeline

  model = mae_lib.create_mae(config)
  optimizer = train.create_optimizer(config)
  abstract_state, _, _ = train.abstract_train_inputs(config, model, optimizer, mesh)
  train._check_free_space(workdir, abstract_state, config.keep_checkpoints)
  manager = checkpoints.create_manager(workdir, config.keep_checkpoints)
  state = checkpoints.restore_latest(manager, abstract_state, train.TrainState)
  resumed = state is not None
  if state is None:
    state = train.init_train_state(config, model, optimizer, mesh)
  if jax.process_index() == 0:
    checkpoints.write_config(workdir, config)
  start_step = int(jax.device_get(state.step))
  base_rng = jax.device_get(state.rng)
  writer = train.create_writer(workdir, start_step if resumed else None)
  num_params = sum(leaf.size for leaf in jax.tree.leaves(state.params))
  logging.info(
    "Audio-MAE %s: %.2fM parameters, %s at step %d",
    config.model.name,
    num_params / 1e6,
    "resuming" if resumed else "starting",
    start_step,
  )

  step_fn = compile_mae_train_step(config, model, optimizer, mesh)
  eval_batches = input_pipeline.eval_batches(config, split="validation")
  replicated = NamedSharding(mesh, P())
  eval_fn = jax.jit(
    lambda params, batch, key: mae_eval_step(params, batch, key, model=model),
    in_shardings=(replicated, NamedSharding(mesh, P("data")), replicated),
    out_shardings=NamedSharding(mesh, P("data")),
  )
  last_step = config.num_train_steps
  if stop_after_step is not None:
    last_step = min(last_step, stop_after_step)

  def run_eval(step: int) -> dict[str, float]:
    scores = evaluate_mae(state.eval_params, eval_fn, eval_batches, mesh, config)
    if scores:
      # Higher is better for the checkpoint manager's best-step policy.
      scores["best_score"] = -scores["reconstruction_loss"]
      writer.write_scalars(step, {f"eval/{name}": value for name, value in scores.items()})
      logging.info(
        "eval step %d: reconstruction %.4f (linear interpolation %.4f)",
        step,
        scores["reconstruction_loss"],
        scores["interpolation_loss"],
      )
    return scores

  if not resumed and start_step < last_step:
    run_eval(start_step)

  batches = input_pipeline.train_batches(config, start_step=start_step, with_stems=False)
  accumulated: list[dict[str, jax.Array]] = []
  interval_start = time.perf_counter()
  interval_steps = 0
  step = start_step
  previous_metrics = None
  try:
    while step < last_step:
      batch = train._to_global({"mom": next(batches)["mom"]}, mesh)
      state, metrics = step_fn(state, batch, jax.random.fold_in(base_rng, step))
      step += 1
      interval_steps += 1
      accumulated.append(metrics)
      if step == start_step + 1:
        jax.block_until_ready(metrics)  # time from after compilation
        interval_start, interval_steps = time.perf_counter(), 0
      # The previous step's counter, so the host never waits on the step just launched.
      if previous_metrics is not None and (
        int(previous_metrics["consecutive_nonfinite"]) >= config.max_consecutive_nonfinite
      ):
        raise train.NonFiniteError(
          f"stopped at step {step - 1}: {config.max_consecutive_nonfinite} consecutive steps "
          f"had a non-finite loss or gradient; the last good checkpoint in "
          f"{workdir / checkpoints.CHECKPOINT_DIR} is kept"
        )
      previous_metrics = metrics
      if step % config.log_every_steps == 0 or step == last_step:
        averaged = jax.device_get(
          jax.tree.map(lambda *values: jnp.mean(jnp.stack(values)), *accumulated)
        )
        accumulated = []
        elapsed = max(time.perf_counter() - interval_start, 1e-9)
        scalars = {f"train/{name}": float(value) for name, value in averaged.items()}
        scalars["train/steps_per_second"] = interval_steps / elapsed
        writer.write_scalars(step, scalars)
        logging.info(
          "step %d/%d | %.2f steps/s | lr %.2e | grad %.3f | reconstruction %.4f",
          step,
          config.num_train_steps,
          scalars["train/steps_per_second"],
          averaged["learning_rate"],
          averaged["grad_norm"],
          averaged["reconstruction"],
        )
        interval_start, interval_steps = time.perf_counter(), 0
      is_eval = step % config.eval_every_steps == 0 or step == config.num_train_steps
      if is_eval or step % config.checkpoint_every_steps == 0 or step == last_step:
        scores = run_eval(step) if is_eval else {}
        checkpoints.save(
          manager, state, step, {"best_score": scores["best_score"]} if scores else None
        )
        writer.flush()  # as in train: rows up to a checkpoint survive a kill -9
  finally:
    manager.wait_until_finished()
    manager.close()
    writer.flush()
    writer.close()
  return state


# --------------------------------------------------------------------------------------------
# Transfer into the separator.


def _field(config: ml_collections.ConfigDict, dotted: str) -> Any:
  value = config
  for part in dotted.split("."):
    value = value.get(part) if hasattr(value, "get") else None
  return value


def _flatten_metadata(tree: Any, prefix: str = "") -> dict[str, Any]:
  """orbax's nested metadata mapping -> {"a/b/c": array metadata (with .shape)}."""
  if not hasattr(tree, "items"):  # orbax's tree metadata is mapping-like, not a Mapping
    return {prefix: tree}
  flat = {}
  for name, value in tree.items():
    flat.update(_flatten_metadata(value, f"{prefix}/{name}" if prefix else str(name)))
  return flat


def transfer_encoder(
  params: Any, config: ml_collections.ConfigDict, which: str | int = "best"
) -> Any:
  """``params`` (the separator's) with the encoder subtrees of ``config.init_from``'s run.

  Args:
    params: the freshly initialised separator parameters (arrays, any sharding: the restored
      arrays take the sharding of the ones they replace).
    config: the MixIT config; ``config.init_from`` is the pre-training workdir.
    which: the pre-training step: "best" (lowest validation reconstruction loss, the
      default), "latest" or a step number.

  Raises:
    checkpoints.CheckpointError naming the workdir: no pre-training run or checkpoint there,
    a run of another task, a front end or sizes that differ, or mismatched shapes.
  """
  workdir = pathlib.Path(config.init_from)
  where = f"config.init_from = {str(workdir)!r}"
  try:
    pre_config = checkpoints.read_config(workdir)
    manager = checkpoints.create_manager(workdir, read_only=True)
  except checkpoints.CheckpointError as error:
    raise checkpoints.CheckpointError(
      f"{where}: no pre-training checkpoint ({error}); run `{PRETRAIN_COMMAND} "
      f"--workdir={workdir}` first, or train the _nomae config"
    ) from None
  try:
    if pre_config.get("task") != "mae":
      raise checkpoints.CheckpointError(
        f"{where}: a {pre_config.get('task', 'mixit')!r} run, not an Audio-MAE pre-training run"
      )
    for field in _MATCHING_FIELDS:
      ours, theirs = _field(config, field), _field(pre_config, field)
      if ours != theirs:
        raise checkpoints.CheckpointError(
          f"{where}: pre-trained with {field} = {theirs!r}, this run has {ours!r}"
        )
    try:
      step = checkpoints._choose_step(manager, which)
    except checkpoints.CheckpointError as error:
      raise checkpoints.CheckpointError(
        f"{where}: {error}; run `{PRETRAIN_COMMAND} --workdir={workdir}` first"
      ) from None
    params_dir = pathlib.Path(manager.directory) / str(step) / "params"
    saved = _flatten_metadata(ocp.PyTreeCheckpointer().metadata(params_dir).item_metadata)
    ours = traverse_util.flatten_dict(dict(params), sep="/")
    wanted = {
      path: leaf for path, leaf in ours.items() if path.split("/")[0] in mae_lib.ENCODER_SUBTREES
    }
    for path, leaf in wanted.items():
      if path not in saved:
        raise checkpoints.CheckpointError(f"{where}: step {step} has no parameter {path}")
      if tuple(saved[path].shape) != tuple(leaf.shape):
        raise checkpoints.CheckpointError(
          f"{where}: {path} is {tuple(saved[path].shape)} in step {step}, the separator's is "
          f"{tuple(leaf.shape)}"
        )
    target = traverse_util.unflatten_dict(
      {
        path: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=leaf.sharding)
        for path, leaf in wanted.items()
      },
      sep="/",
    )
    # A partial restore: only the listed arrays are read from the step's ``params`` item.
    restored = ocp.PyTreeCheckpointer().restore(
      params_dir,
      args=ocp.args.PyTreeRestore(
        item=target,
        restore_args=ocp.checkpoint_utils.construct_restore_args(target),
        partial_restore=True,
      ),
    )
  finally:
    manager.close()
  merged = dict(ours)
  merged.update(traverse_util.flatten_dict(restored, sep="/"))
  logging.info(
    "initialised %s from %s step %d",
    ", ".join(sorted({path.split("/")[0] for path in wanted})),
    workdir,
    step,
  )
  return traverse_util.unflatten_dict(merged, sep="/")
