"""Weights from another run into a fresh separator: what ``--config.init_from=<workdir>`` does.

``initial_params`` looks at the run in ``init_from``: an Audio-MAE pre-training run gives the
separator its encoder (``transfer_encoder``), a separator run (MixIT or semi-supervised, the
same model) gives it every parameter (``transfer_separator``: fine-tuning, e.g. the
quickstart's model on a folder of one's own songs).

``transfer_encoder`` restores the pre-training run's ``encoder``, ``input_projection``,
``positional_conv`` and ``transformer`` subtrees through an orbax partial restore (the
decoder, mask token and prediction head are never read) into the freshly initialised
separator's parameters; the separator's own heads (``output_norm``, ``mask_head``, the
learned decoder) stay fresh.
"""

from __future__ import annotations

import pathlib
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging
from flax import traverse_util

from trackformer_jax import checkpoints
from trackformer_jax.models import mae as mae_lib
from trackformer_jax.training import workdir as workdir_lib

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
# Tasks whose runs hold a whole separator (the same model, another objective).
SEPARATOR_TASKS = ("mixit", "semisupervised")


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


def _restore_checked(
  params_dir: pathlib.Path, wanted: dict[str, Any], where: str, step: int, *, whole: bool
) -> dict[str, Any]:
  """``{"a/b/c": array}``: the arrays of ``wanted`` (flat paths -> the separator's leaves)
  read from a step's ``params`` folder, each with its leaf's shape, dtype and sharding.

  Every path must be saved with the leaf's shape; with ``whole`` the step must hold no other
  parameter either (the same tree). Only the listed arrays are read (a partial restore).
  """
  saved = _flatten_metadata(ocp.PyTreeCheckpointer().metadata(params_dir).item_metadata)
  if whole and set(saved) != set(wanted):
    missing, extra = sorted(set(wanted) - set(saved)), sorted(set(saved) - set(wanted))
    raise checkpoints.CheckpointError(
      f"{where}: step {step}'s parameters are not this separator's (missing {missing[:3]}, "
      f"extra {extra[:3]})"
    )
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
  restored = ocp.PyTreeCheckpointer().restore(
    params_dir,
    args=ocp.args.PyTreeRestore(
      item=target,
      restore_args=ocp.checkpoint_utils.construct_restore_args(target),
      partial_restore=True,
    ),
  )
  return traverse_util.flatten_dict(restored, sep="/")


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
      step = checkpoints.choose_step(manager, which)
    except checkpoints.CheckpointError as error:
      raise checkpoints.CheckpointError(
        f"{where}: {error}; run `{PRETRAIN_COMMAND} --workdir={workdir}` first"
      ) from None
    params_dir = pathlib.Path(manager.directory) / str(step) / "params"
    ours = traverse_util.flatten_dict(dict(params), sep="/")
    wanted = {
      path: leaf for path, leaf in ours.items() if path.split("/")[0] in mae_lib.ENCODER_SUBTREES
    }
    restored = _restore_checked(params_dir, wanted, where, step, whole=False)
  finally:
    manager.close()
  merged = dict(ours)
  merged.update(restored)
  logging.info(
    "initialised %s from %s step %d",
    ", ".join(sorted({path.split("/")[0] for path in wanted})),
    workdir,
    step,
  )
  return traverse_util.unflatten_dict(merged, sep="/")


def initial_params(params: Any, config: ml_collections.ConfigDict) -> Any:
  """``params`` with what ``config.init_from``'s run offers: an Audio-MAE run's encoder (its
  best step), or a separator run's every parameter (its latest step)."""
  try:
    task = checkpoints.read_config(pathlib.Path(config.init_from)).get("task", "mixit")
  except checkpoints.CheckpointError:
    task = "mae"  # transfer_encoder says what is missing, with the pre-training command
  if task in SEPARATOR_TASKS:
    return transfer_separator(params, config)
  return transfer_encoder(params, config)


def transfer_separator(
  params: Any, config: ml_collections.ConfigDict, which: str | int = "latest"
) -> Any:
  """Every parameter of the separator trained in ``config.init_from`` (fine-tuning).

  The run must be the same model: ``model``, ``sample_rate_hz`` and ``channels`` as this
  config's (``training.workdir.model_changes``), and the same parameter tree. The step's
  moving average is read where the run kept one (``ema_params``: what it evaluated, what
  ``separate`` loads), its raw ``params`` otherwise. Returns arrays with the shardings of
  ``params``.

  Raises:
    checkpoints.CheckpointError naming the workdir: no checkpoint, another model, another tree.
  """
  workdir = pathlib.Path(config.init_from)
  where = f"config.init_from = {str(workdir)!r}"
  saved_config = checkpoints.read_config(workdir)
  changes = workdir_lib.model_changes(
    saved_config.to_dict(), config, fields=("model", "sample_rate_hz", "channels")
  )
  if changes:
    raise checkpoints.CheckpointError(
      f"{where}: trained as another model ({'; '.join(changes[:4])}"
      f"{'; …' if len(changes) > 4 else ''}); fine-tuning keeps the model as it is"
    )
  manager = checkpoints.create_manager(workdir, read_only=True)
  try:
    try:
      step = checkpoints.choose_step(manager, which)
    except checkpoints.CheckpointError as error:
      raise checkpoints.CheckpointError(f"{where}: {error}") from None
    step_dir = pathlib.Path(manager.directory) / str(step)
    item = checkpoints.weights_item(step_dir)
    ours = traverse_util.flatten_dict(dict(params), sep="/")
    restored = _restore_checked(step_dir / item, ours, where, step, whole=True)
  finally:
    manager.close()
  logging.info("initialised every parameter from %s step %d (%s)", workdir, step, item)
  return traverse_util.unflatten_dict(restored, sep="/")
