"""The one checkpoint path: orbax ``CheckpointManager`` for training, ``load_params`` for tools.

Layout of a workdir::

  workdir/config.json             the run's config (written at start, read by ``load_params``)
  workdir/checkpoints/<step>/     one orbax step: items ``params`` and ``train`` (+ metrics),
                                  and ``ema_params`` when the run keeps a moving average

The parameters are items of their own so that tools (evaluate, export, transfer) restore them
alone, without reading the optimiser state (twice the size of the parameters for Adam). Tools
read ``ema_params`` where a step has it (the weights the run evaluated), ``params`` otherwise.

Kept: the newest ``config.keep_checkpoints`` steps and the best one by ``BEST_METRIC`` (higher is
better); every other step is deleted. Saves are asynchronous: ``save`` returns once the arrays
are copied off the device, so the caller may donate them to the next step right away. orbax
writes each step into a temporary folder and renames it when complete, so a run killed in the
middle of a save leaves no half-written step behind that a restart could pick up.
"""

from __future__ import annotations

import json
import logging as python_logging  # absl's logging is `logging` here
import pathlib
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from orbax.checkpoint import checkpoint_managers

# The metric that decides the best checkpoint: the validation score the train loop computes
# (stem SI-SNR improvement where the data has stems, mixture-of-mixtures otherwise).
BEST_METRIC = "best_score"
CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"
# Where ``restore_latest`` moves steps it cannot read (inside the workdir, never deleted).
UNREADABLE_DIR = "unreadable_checkpoints"
_ITEMS = ("params", "train", "ema_params")
WEIGHTS = ("ema", "raw")


class CheckpointError(RuntimeError):
  """A workdir or checkpoint that cannot be read; the message names it."""


def _best_score(metrics: dict[str, Any] | None) -> float:
  # Steps saved between evaluations carry no score: rank them below any scored step.
  if not metrics or BEST_METRIC not in metrics:
    return float("-inf")
  score = float(metrics[BEST_METRIC])
  return score if np.isfinite(score) else float("-inf")


def create_manager(
  workdir: str | pathlib.Path, keep_checkpoints: int = 3, *, read_only: bool = False
) -> ocp.CheckpointManager:
  """A manager over ``workdir/checkpoints`` keeping the last ``keep_checkpoints`` and the best."""
  directory = pathlib.Path(workdir).absolute() / CHECKPOINT_DIR
  if read_only and not directory.is_dir():
    raise CheckpointError(f"{directory}: no checkpoints folder (was this workdir trained?)")
  policy = checkpoint_managers.AnyPreservationPolicy(
    [
      checkpoint_managers.LatestN(n=keep_checkpoints),
      checkpoint_managers.BestN(
        get_metric_fn=_best_score, n=1, keep_checkpoints_without_metrics=False
      ),
    ]
  )
  options = ocp.CheckpointManagerOptions(
    preservation_policy=policy,
    best_fn=_best_score,
    best_mode="max",
    enable_async_checkpointing=not read_only,
    read_only=read_only,
    create=not read_only,
    # A save cut short by a kill leaves a whole checkpoint's worth of temporary files.
    cleanup_tmp_directories=not read_only,
  )
  try:
    return ocp.CheckpointManager(directory, item_names=_ITEMS, options=options)
  except Exception as error:  # noqa: BLE001 - orbax reads every step's bookkeeping here
    # A step whose metadata or metrics file is garbage (not even UTF-8) stops orbax from
    # listing any step. Training sets such steps aside and lists the rest; tools only say so.
    damaged = [] if read_only else _steps_with_unreadable_bookkeeping(directory)
    if not damaged:
      raise CheckpointError(f"{directory}: cannot list the checkpoints ({error})") from None
    for step in damaged:
      aside = directory.parent / UNREADABLE_DIR / f"{step}.{time.strftime('%Y%m%d-%H%M%S')}"
      aside.parent.mkdir(parents=True, exist_ok=True)
      (directory / str(step)).rename(aside)
      logging.warning(
        "checkpoint %s is unreadable (%s); moved to %s", directory / str(step), error, aside
      )
    return ocp.CheckpointManager(directory, item_names=_ITEMS, options=options)


def saved_steps(workdir: str | pathlib.Path) -> list[int]:
  """The steps checkpointed in ``workdir`` (none where it holds no checkpoints).

  Read from the folder names: orbax writes a step under a temporary name and renames it to
  the bare number once whole, and a read-only manager would only add warnings here.
  """
  folder = pathlib.Path(workdir) / CHECKPOINT_DIR
  if not folder.is_dir():
    return []
  return sorted(int(path.name) for path in folder.iterdir() if path.name.isdigit())


def _steps_with_unreadable_bookkeeping(directory: pathlib.Path) -> list[int]:
  """Steps whose ``_CHECKPOINT_METADATA`` or ``metrics`` file is not readable JSON."""
  damaged = []
  for step_dir in directory.iterdir():
    if not step_dir.name.isdigit():
      continue
    for name in ("_CHECKPOINT_METADATA", "metrics/metrics"):
      path = step_dir / name
      try:
        if path.exists():
          json.loads(path.read_text())
      except (OSError, ValueError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        damaged.append(int(step_dir.name))
        break
  return sorted(damaged)


def split_state(state: Any) -> dict[str, Any]:
  """A train state with a ``params`` field as checkpoint items.

  ``params``, ``ema_params`` (only when the state has a field of that name that is not None)
  and ``train``: every other field, as a dict.
  """
  weights = ("params", "ema_params")
  items = {"params": state.params}
  if getattr(state, "ema_params", None) is not None:
    items["ema_params"] = state.ema_params
  items["train"] = {
    name: getattr(state, name) for name in state.__dataclass_fields__ if name not in weights
  }
  return items


def save(
  manager: ocp.CheckpointManager, state: Any, step: int, metrics: dict[str, float] | None = None
) -> bool:
  """Starts an asynchronous save of ``state`` at ``step``; ``metrics`` may hold ``BEST_METRIC``.

  Saving a step that already exists (a restart that lands on a saved step) is a no-op.
  """
  if step in manager.all_steps():
    return False
  items = split_state(state)
  scalars = {"step": int(step)}
  for name, value in (metrics or {}).items():
    scalars[name] = float(value)
  return manager.save(
    step,
    args=ocp.args.Composite(**{name: ocp.args.StandardSave(item) for name, item in items.items()}),
    metrics=scalars,
    force=True,
  )


def restore_latest(
  manager: ocp.CheckpointManager, abstract_state: Any, rebuild: Callable[..., Any]
) -> Any | None:
  """The newest readable step restored into ``abstract_state``'s shapes and shardings.

  Args:
    manager: from ``create_manager``.
    abstract_state: the train state as ``jax.ShapeDtypeStruct`` leaves with shardings, from
      ``jax.eval_shape`` (nothing is allocated twice).
    rebuild: ``rebuild(params=..., [ema_params=...,] **train)`` makes a train state from the
      restored items.

  Returns:
    The restored state, or None when the workdir has no checkpoint. A step that fails to
    restore (truncated or corrupted files) is skipped with a warning naming it and the next
    older one is tried; once one restores, the unreadable ones are moved to
    ``workdir/unreadable_checkpoints/``. If none restores, CheckpointError (nothing moved).
  """
  abstract_items = split_state(abstract_state)
  steps = sorted(manager.all_steps(), reverse=True)
  unreadable = []
  for step in steps:
    path = pathlib.Path(manager.directory) / str(step)
    silence = OrphanedReadReports(path)  # a failed step's reads report after the fallback
    try:
      restored = manager.restore(
        step,
        args=ocp.args.Composite(
          **{name: ocp.args.StandardRestore(item) for name, item in abstract_items.items()}
        ),
      )
    except Exception as error:  # noqa: BLE001 - any unreadable step falls back to an older one
      reason = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
      logging.warning("checkpoint %s is unreadable (%s); trying an older one", path, reason)
      unreadable.append(step)
      continue
    silence.remove()
    # Moved only once an older step has restored: when none does, the cause is more likely
    # the config (shapes changed) than the files, and nothing should be touched.
    for bad_step in unreadable:
      logging.warning(
        "checkpoint %s moved to %s; training resumes from step %d",
        pathlib.Path(manager.directory) / str(bad_step),
        _move_aside(manager, bad_step),
        step,
      )
    logging.info("restored checkpoint %s", path)
    parts = {name: restored[name] for name in abstract_items if name != "train"}
    return rebuild(**parts, **restored["train"])
  if steps:
    raise CheckpointError(
      f"{manager.directory}: none of the steps {steps} could be restored (a changed config?)"
    )
  return None


def _move_aside(manager: ocp.CheckpointManager, step: int) -> pathlib.Path:
  """Moves an unreadable step out of the manager's sight, kept for inspection.

  Left in place it would shadow the step: the resumed run reaches that step again and
  ``save`` skips a step that already exists, so the good state would never be written.
  """
  directory = pathlib.Path(manager.directory)
  aside = directory.parent / UNREADABLE_DIR / f"{step}.{time.strftime('%Y%m%d-%H%M%S')}"
  if jax.process_index() == 0:
    aside.parent.mkdir(parents=True, exist_ok=True)
    (directory / str(step)).rename(aside)
  manager.reload()
  return aside


def write_config(workdir: str | pathlib.Path, config: ml_collections.ConfigDict) -> None:
  """Writes ``workdir/config.json`` (atomically: a half-written file is never read back)."""
  path = pathlib.Path(workdir) / CONFIG_FILE
  temporary = path.with_suffix(".json.tmp")
  temporary.write_text(json.dumps(config.to_dict(), indent=2, sort_keys=True, default=list))
  temporary.replace(path)


def read_config(workdir: str | pathlib.Path) -> ml_collections.ConfigDict:
  """The config a run was trained with, from ``workdir/config.json``."""
  path = pathlib.Path(workdir) / CONFIG_FILE
  if not path.is_file():
    raise CheckpointError(f"{path}: missing (not a training workdir?)")
  try:
    fields = json.loads(path.read_text())
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
    raise CheckpointError(f"{path}: unreadable config ({error})") from None
  if not isinstance(fields, dict):
    raise CheckpointError(f"{path}: expected a JSON object")
  return ml_collections.ConfigDict(fields)


def choose_step(manager: ocp.CheckpointManager, which: str | int) -> int:
  """The saved step ``which`` names: "latest", "best" (the latest if none is best) or a number."""
  steps = manager.all_steps()
  if not steps:
    raise CheckpointError(f"{manager.directory}: no checkpoint saved yet")
  if which == "latest":
    return max(steps)
  if which == "best":
    best = manager.best_step()
    return max(steps) if best is None else best
  try:
    step = int(which)
  except (TypeError, ValueError):
    raise CheckpointError(
      f"checkpoint {which!r}: expected 'best', 'latest' or a step number"
    ) from None
  if step not in steps:
    raise CheckpointError(f"{manager.directory}: no step {step}; saved steps are {sorted(steps)}")
  return step


def load_params(
  workdir: str | pathlib.Path, which: str | int = "best", weights: str = "ema"
) -> tuple[ml_collections.ConfigDict, Any]:
  """(config, params) of a trained workdir: ``load_weights`` without its provenance."""
  config, params, _ = load_weights(workdir, which, weights)
  return config, params


def weights_item(step_dir: pathlib.Path, weights: str = "ema") -> str:
  """The item of a saved step that holds ``weights``: ``ema_params`` for "ema" where the run
  kept a moving average (the weights it evaluated), ``params`` otherwise."""
  return "ema_params" if weights == "ema" and (step_dir / "ema_params").is_dir() else "params"


def load_weights(
  workdir: str | pathlib.Path, which: str | int = "best", weights: str = "ema"
) -> tuple[ml_collections.ConfigDict, Any, dict[str, Any]]:
  """(config, params, source) of a trained workdir; ``which`` is "best", "latest" or a step.

  ``source`` says what was read: ``{"step": int, "weights": "ema" | "raw"}``.

  ``weights="ema"`` gives the step's moving average where the run kept one (the weights its
  validation scored) and its raw parameters otherwise; ``"raw"`` always the raw parameters.

  The parameters come back on the first local device as ``jax.Array``s, whatever the device
  and host count the run was trained on: every leaf gets an explicit single-device target,
  since the shardings saved with it name devices (other hosts' among them) that a tool run
  on one machine does not have.
  """
  if weights not in WEIGHTS:
    raise CheckpointError(f"weights {weights!r}: expected one of {WEIGHTS}")
  config = read_config(workdir)
  manager = create_manager(workdir, read_only=True)
  try:
    step = choose_step(manager, which)
    step_dir = pathlib.Path(manager.directory) / str(step)
    item = weights_item(step_dir, weights)
    # The manager itself knows no handler for its items until one is used, so it has no
    # metadata for them; the step's params folder is read directly.
    params_dir = step_dir / item
    try:
      metadata = ocp.PyTreeCheckpointer().metadata(params_dir).item_metadata.tree
    except Exception as error:  # noqa: BLE001 - orbax raises many kinds on damaged files
      raise CheckpointError(f"{params_dir}: unreadable checkpoint ({error})") from None
    device = jax.local_devices()[0]
    target = jax.tree.map(
      lambda leaf: jax.ShapeDtypeStruct(
        leaf.shape, leaf.dtype, sharding=jax.sharding.SingleDeviceSharding(device)
      ),
      metadata,
    )
    restored = manager.restore(
      step, args=ocp.args.Composite(**{item: ocp.args.StandardRestore(target)})
    )
  finally:
    manager.close()
  logging.info("loaded %s of %s step %d", item, workdir, step)
  source = {"step": int(step), "weights": "ema" if item == "ema_params" else "raw"}
  return config, restored[item], source


class OrphanedReadReports(python_logging.Filter):
  """Drops what the reads of ``folder`` report after a failed restore, until ``remove``.

  Installed before a restore that may fail (a damaged checkpoint or model folder) and removed
  once it succeeds.

  orbax closes its event loop at the first failed read while the reads of other arrays are
  still running. Those then report, from other threads and at shutdown, to
  ``sys.unraisablehook`` (the closed loop; a read's failure when its coroutine is collected)
  and to the ``asyncio`` logger (a failure nobody retrieved): tracebacks beside the one-line
  message. Each names the folder, but for the closed loop; any other report goes through.
  """

  def __init__(self, folder: pathlib.Path):
    super().__init__()
    self.folder = str(folder)
    self.previous_hook = sys.unraisablehook
    sys.unraisablehook = self.unraisable
    python_logging.getLogger("asyncio").addFilter(self)

  def remove(self) -> None:
    sys.unraisablehook = self.previous_hook
    python_logging.getLogger("asyncio").removeFilter(self)

  def unraisable(self, report) -> None:
    error = report.exc_value
    closed_loop = isinstance(error, RuntimeError) and str(error) == "Event loop is closed"
    if not (closed_loop or self.folder in str(error)):
      self.previous_hook(report)

  def filter(self, record: python_logging.LogRecord) -> bool:
    return self.folder not in record.getMessage()
