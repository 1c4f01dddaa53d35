"""Workdir safety, checked before anything is built: writable, not held, room, same model.

``prepare_workdir`` and ``lock_workdir`` (host 0) run first; ``check_free_space`` once the
state's size is known; ``check_same_model`` before a run resumes the checkpoints it finds.
"""

from __future__ import annotations

import fcntl
import json
import os
import pathlib
import shutil
from typing import Any

import flax
import jax
import ml_collections

from trackformer_jax import checkpoints
from trackformer_jax.training.errors import WorkdirError


def lock_workdir(workdir: pathlib.Path):
  """Holds ``workdir/.lock`` for the process's lifetime; a second training refuses to start.

  An flock dies with its process, so a killed run never leaves a stale lock behind.
  """
  handle = open(workdir / ".lock", "w")  # noqa: SIM115 - held until the process exits
  try:
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError:
    handle.close()
    raise WorkdirError(f"{workdir}: another training is using this workdir") from None
  return handle


def prepare_workdir(workdir: pathlib.Path) -> None:
  try:
    workdir.mkdir(parents=True, exist_ok=True)
    # One probe per process: the hosts of a multi-host run share the workdir, and with one
    # name a host could unlink the probe under another one's feet.
    probe = workdir / f".write_probe.{jax.process_index()}.{os.getpid()}"
    probe.write_text("ok")
    probe.unlink()
  except OSError as error:
    raise WorkdirError(f"{workdir}: not writable ({error.strerror or error})") from None


# The fields that make the trained function what it is. A resumed run may change any other
# (more steps, another evaluation interval, new data), not these.
MODEL_FIELDS = ("task", "model", "sample_rate_hz", "channels")


def model_changes(saved: dict, config: ml_collections.ConfigDict, fields=MODEL_FIELDS) -> list[str]:
  """``"field old -> new"`` for each of ``fields`` (dotted leaves) where ``config`` differs
  from ``saved`` (a run's config.json as a dict). Fields on one side only are left alone: a
  field added to the code since the run started takes a default that keeps the old
  behaviour."""
  # Through JSON as config.json was written, so tuples compare as the lists saved there.
  now = json.loads(json.dumps(config.to_dict(), default=list))
  before = flax.traverse_util.flatten_dict(
    {name: saved[name] for name in fields if name in saved}, sep="."
  )
  after = flax.traverse_util.flatten_dict(
    {name: now[name] for name in fields if name in now}, sep="."
  )
  return [
    f"{key} {before[key]!r} -> {after[key]!r}"
    for key in sorted(set(before) & set(after))
    if before[key] != after[key]
  ]


def check_same_model(workdir: pathlib.Path, config: ml_collections.ConfigDict) -> None:
  """Refuses to resume checkpoints trained as another model.

  Parameters of the same shapes restore without complaint (an STFT hop, for one, changes
  no shape), so the run would go on silently as a hybrid of two models.
  """
  try:
    saved = checkpoints.read_config(workdir).to_dict()
  except checkpoints.CheckpointError:
    return  # a missing or unreadable config.json is rewritten below; the checkpoints decide
  changed = model_changes(saved, config)
  if changed:
    raise WorkdirError(
      f"{workdir}: its checkpoints were trained as another model ({'; '.join(changed[:4])}"
      f"{'; …' if len(changed) > 4 else ''}); train into a new --workdir, or move this one aside"
    )


def check_free_space(workdir: pathlib.Path, abstract_state: Any, keep_checkpoints: int) -> None:
  """Refuses to start when the checkpoints the run will keep cannot fit in ``workdir``.

  On disk at once: ``keep_checkpoints`` steps, the best one and the one being written (a
  resumed run's own checkpoints count as room). Found out at the first save instead, a full
  disk would stop the run with an orbax traceback, possibly days in.
  """
  checkpoint_bytes = sum(
    leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(abstract_state)
  )
  needed = (keep_checkpoints + 2) * checkpoint_bytes
  # A resumed run's own checkpoints count as room: the new ones replace them.
  saved = workdir / checkpoints.CHECKPOINT_DIR
  if saved.is_dir():
    needed -= sum(path.stat().st_size for path in saved.rglob("*") if path.is_file())
  free = shutil.disk_usage(workdir).free
  if free < needed:
    raise WorkdirError(
      f"{workdir}: {free / 2**20:.1f} MiB free, but checkpoints need {needed / 2**20:.1f} MiB "
      f"more ({keep_checkpoints + 2} of {checkpoint_bytes / 2**20:.1f} MiB: "
      f"config.keep_checkpoints = {keep_checkpoints}, the best one and the one being written)"
    )
