"""Exporting a separator: ``export_model`` writes a model folder (``model_folder``) whole or
not at all; ``export_workdir`` exports a training workdir's checkpoint.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import tempfile
from typing import Any

import jax
import jax.numpy as jnp

import trackformer_jax
from trackformer_jax.atomic_files import follow_umask, write_json_atomic
from trackformer_jax.inference.loading import (
  as_variables,
  config_channels,
  config_sample_rate,
  load_model,
)
from trackformer_jax.inference.model_folder import (
  CONFIG_FILE,
  EXPORT_FORMAT,
  EXPORTED_FN_FILE,
  METADATA_FILE,
  PARAMS_DIR,
  StemMap,
  save_stem_map,
)

_EXPORT_PLATFORMS = ("cpu", "cuda")


def export_model(
  config,
  variables,
  out_dir: str | os.PathLike,
  *,
  stem_map: StemMap | None = None,
  extra_metadata: dict[str, Any] | None = None,
  export_function_shape: tuple[int, int] | None = None,
  overwrite: bool = False,
) -> pathlib.Path:
  """Writes an exported model folder; whole or not at all.

  Args:
    config: the training ConfigDict.
    variables: ``{"params": ...}`` (plus any other collections the model holds).
    out_dir: destination; must not exist unless ``overwrite``.
    stem_map: stored as ``stem_map.json`` when given.
    extra_metadata: merged into ``metadata.json`` (e.g. the source workdir and step).
    export_function_shape: ``(batch, segment_frames)``: also serialise the forward pass with
      ``jax.export`` for inputs ``[batch, channels, segment_frames]``.
    overwrite: replace an existing folder.
  Returns:
    The folder.
  """
  import orbax.checkpoint as ocp

  out_dir = pathlib.Path(out_dir)
  if out_dir.exists() and not overwrite:
    raise FileExistsError(f"{out_dir}: exists (pass --overwrite to replace it)")
  if out_dir.exists() and not (out_dir / METADATA_FILE).is_file():
    # --overwrite replaces an earlier export, never whatever folder --out happens to name
    # (the workdir being exported, a home folder, ".").
    raise FileExistsError(f"{out_dir}: exists and is not an exported model; not replacing it")
  out_dir.parent.mkdir(parents=True, exist_ok=True)
  variables = as_variables(variables)
  metadata = {
    "format": EXPORT_FORMAT,
    "model_name": str(config.model.get("name", "unknown")),
    "sample_rate_hz": config_sample_rate(config),
    "channels": config_channels(config),
    "num_outputs": int(config.model.get("num_outputs", 8)),
    "version": trackformer_jax.__version__,
    "jax_version": jax.__version__,
    "exported_function": None,
    **(extra_metadata or {}),
  }

  staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
  follow_umask(staging, folder=True)  # it becomes out_dir
  try:
    with ocp.StandardCheckpointer() as checkpointer:
      checkpointer.save((staging / PARAMS_DIR).resolve(), variables)
      checkpointer.wait_until_finished()
    (staging / CONFIG_FILE).write_text(config.to_json_best_effort(indent=2) + "\n")
    if stem_map is not None:
      save_stem_map(staging, stem_map)
    if export_function_shape is not None:
      batch, frames = (int(x) for x in export_function_shape)
      input_shape = (batch, metadata["channels"], frames)
      blob, platforms = _serialise_forward(config, variables, input_shape)
      (staging / EXPORTED_FN_FILE).write_bytes(blob)
      metadata["exported_function"] = {
        "file": EXPORTED_FN_FILE,
        "input_shape": list(input_shape),
        "platforms": platforms,
        "call": "exported.call(variables, mix) -> estimates [B, N, C, T]",
      }
    write_json_atomic(staging / METADATA_FILE, metadata)
    if out_dir.exists():
      old = out_dir.with_name(f".{out_dir.name}.old")
      if old.exists():
        shutil.rmtree(old)
      os.replace(out_dir, old)
      os.replace(staging, out_dir)
      shutil.rmtree(old)
    else:
      os.replace(staging, out_dir)
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise
  return out_dir


def _serialise_forward(config, variables, input_shape) -> tuple[bytes, list[str]]:
  from trackformer_jax import models

  module = models.create_model(config.model)

  def forward(variables, mix):
    estimates, _ = module.apply(variables, mix, deterministic=True)
    return estimates

  abstract_vars = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), variables)
  mix = jax.ShapeDtypeStruct(input_shape, jnp.float32)
  try:
    # Lowered for CPU and CUDA at once, so a folder exported on either runs on both.
    exported = jax.export.export(jax.jit(forward), platforms=_EXPORT_PLATFORMS)(abstract_vars, mix)
  except (ValueError, NotImplementedError, RuntimeError):
    exported = jax.export.export(jax.jit(forward))(abstract_vars, mix)  # this backend only
  return bytes(exported.serialize()), list(exported.platforms)


def export_workdir(
  workdir: str | os.PathLike,
  out_dir: str | os.PathLike,
  *,
  checkpoint: str | int = "best",
  weights: str = "ema",
  export_function_shape: tuple[int, int] | None = None,
  overwrite: bool = False,
) -> pathlib.Path:
  """Exports a training workdir's checkpoint (and its stem map, if calibrated there).

  ``weights`` as in ``load_model``. The metadata records the step and which weights were
  written: "ema" only where that step had a moving average, "raw" otherwise.
  """
  model = load_model(workdir, checkpoint=checkpoint, weights=weights)
  return export_model(
    model.config,
    model.variables,
    out_dir,
    stem_map=model.stem_map,
    extra_metadata={
      "source_workdir": str(pathlib.Path(workdir).resolve()),
      "checkpoint": str(checkpoint),
      "checkpoint_step": model.source["step"],
      "weights": model.source["weights"],
    },
    export_function_shape=export_function_shape,
    overwrite=overwrite,
  )
