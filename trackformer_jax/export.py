"""Export a trained separator, and load one: the only place the tools get a model from.

An exported folder holds everything separation needs and nothing training needs::

  exported/x/
    params/                  orbax checkpoint of the model's variables (params only, no optimiser)
    config.json              the training config (ConfigDict as JSON)
    metadata.json            sample rate, channels, model name, number of outputs, version
    stem_map.json            optional: which outputs make which stem (written by calibrate)
    inference.jaxexport      optional: serialised ``jax.export`` of the forward pass

``load_model(path)`` takes such a folder or a training workdir (``config.json`` plus orbax
checkpoints, read through ``checkpoints.load_params``). No pickle anywhere on the load path:
orbax stores arrays as tensorstore/OCDBT, JSON stores the rest, ``jax.export`` uses its own
flatbuffer format.

CLI::

  python -m trackformer_jax.export --workdir runs/x [--checkpoint best] [--weights ema|raw]
      --out exported/x
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

import trackformer_jax

STEM_NAMES = ("vocals", "bass", "drums", "other")
EXPORT_FORMAT = "trackformer_jax.export/1"
PARAMS_DIR = "params"
CONFIG_FILE = "config.json"
METADATA_FILE = "metadata.json"
STEM_MAP_FILE = "stem_map.json"
EXPORTED_FN_FILE = "inference.jaxexport"
_EXPORT_PLATFORMS = ("cpu", "cuda")
# Long enough for any front end (default STFT n_fft is 1024); parameters do not depend on it.
_INIT_FRAMES = 8192


class ModelLoadError(ValueError):
  """A model folder or workdir that cannot be loaded; the message names the path."""


# --------------------------------------------------------------------------------------------
# Stem map


@dataclasses.dataclass(frozen=True)
class StemMap:
  """Which stem each model output belongs to.

  ``output_to_stem[i]`` names the stem output ``i`` is added to; every stem in ``stems`` has
  at least one output. ``votes[i][k]`` (optional) is how often calibration assigned output
  ``i`` to stem ``k``.
  """

  output_to_stem: tuple[str, ...]
  stems: tuple[str, ...] = STEM_NAMES
  votes: tuple[tuple[float, ...], ...] | None = None

  def __post_init__(self):
    for stem in self.stems:
      # Stems name the files separate writes: a map from a downloaded model must not be able
      # to write outside the output folder ("../../x") or onto it (".", "").
      if stem in ("", ".", "..") or any(c in stem for c in "/\\\0"):
        raise ValueError(f"stem map: stem name {stem!r} is not a plain file name")
    unknown = sorted(set(self.output_to_stem) - set(self.stems))
    if unknown:
      raise ValueError(f"stem map: outputs name unknown stems {unknown}; stems are {self.stems}")

  @property
  def num_outputs(self) -> int:
    return len(self.output_to_stem)

  def combine(self, outputs: np.ndarray) -> dict[str, np.ndarray]:
    """Sums the outputs of each stem: ``outputs [N, ...]`` -> ``{stem: [...]}``.

    A stem no output maps to comes back silent, so the stems still sum to the input.
    """
    if outputs.shape[0] != self.num_outputs:
      raise ValueError(
        f"stem map is for {self.num_outputs} outputs, got outputs of shape {outputs.shape}"
      )
    result = {}
    for stem in self.stems:
      members = [i for i, s in enumerate(self.output_to_stem) if s == stem]
      result[stem] = outputs[members].sum(axis=0) if members else np.zeros_like(outputs[0])
    return result

  def to_json(self) -> dict[str, Any]:
    return {
      "stems": list(self.stems),
      "output_to_stem": list(self.output_to_stem),
      "votes": None if self.votes is None else [list(map(float, v)) for v in self.votes],
    }

  @classmethod
  def from_json(cls, obj: dict[str, Any], *, source: str = "stem map") -> StemMap:
    try:
      votes = obj.get("votes")
      return cls(
        output_to_stem=tuple(str(s) for s in obj["output_to_stem"]),
        stems=tuple(str(s) for s in obj.get("stems", STEM_NAMES)),
        votes=None if votes is None else tuple(tuple(float(x) for x in v) for v in votes),
      )
    except (KeyError, TypeError, ValueError) as e:
      raise ModelLoadError(f"{source}: not a valid stem map ({e})") from e


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
  """Writes JSON whole or not at all (temporary file in the same folder, then rename)."""
  path = pathlib.Path(path)
  fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
  try:
    with os.fdopen(fd, "w") as f:
      json.dump(obj, f, indent=2, sort_keys=False)
      f.write("\n")
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def save_stem_map(model_dir: str | os.PathLike, stem_map: StemMap) -> pathlib.Path:
  """Stores ``stem_map`` with the model (exported folder or workdir); returns the file."""
  path = pathlib.Path(model_dir) / STEM_MAP_FILE
  write_json_atomic(path, stem_map.to_json())
  return path


def read_stem_map(model_dir: str | os.PathLike) -> StemMap | None:
  path = pathlib.Path(model_dir) / STEM_MAP_FILE
  if not path.exists():
    return None
  try:
    obj = json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise ModelLoadError(f"{path}: not valid JSON ({e})") from e
  return StemMap.from_json(obj, source=str(path))


# --------------------------------------------------------------------------------------------
# The loaded model


# apply_fn(mix [B, C, T] float32, want_masks=False)
#   -> (estimates [B, N, C, T], masks [B, N, frames, ...] or None)
ApplyFn = Callable[..., tuple[np.ndarray, np.ndarray | None]]


@dataclasses.dataclass
class LoadedModel:
  """A separator ready to run: what every tool gets from ``load_model``.

  ``apply_fn(mix [B, C, T], want_masks=False) -> (estimates [B, N, C, T], masks or None)``
  runs the forward pass (jitted; one compilation per input shape); masks come back only
  when asked for (they are larger than the audio) and when the model has them. When
  ``fixed_input_shape`` is set (a deserialised ``jax.export`` function), ``apply_fn`` only
  accepts that ``(B, C, T)``.
  """

  name: str  # what the model is called in output paths (folder name by default)
  model_name: str  # the registry name, e.g. "performer"
  sample_rate_hz: int
  channels: int
  num_outputs: int
  apply_fn: ApplyFn
  config: ml_collections.ConfigDict | None = None
  variables: Any = None
  stem_map: StemMap | None = None
  path: str | None = None
  fixed_input_shape: tuple[int, int, int] | None = None
  # Where the weights came from, {"step": int, "weights": "ema" | "raw"}: read from a
  # workdir, or recorded in an export's metadata; empty when unknown (built in memory, or an
  # export written before the metadata recorded them).
  source: dict[str, Any] = dataclasses.field(default_factory=dict)

  @property
  def output_names(self) -> list[str]:
    if self.stem_map is not None:
      return list(self.stem_map.stems)
    return [f"output_{i}" for i in range(self.num_outputs)]


def _config_sample_rate(config) -> int:
  return int(config.get("sample_rate_hz", 44100))


def _config_channels(config) -> int:
  return int(config.get("channels", 1))


# One jitted forward per model definition (its repr holds every hyper-parameter): loading a
# second checkpoint of the same config, or its random-init control, reuses the compilation.
_FORWARD_CACHE: dict[tuple[str, bool], Callable] = {}


def _compiled_forward(module, want_masks: bool) -> Callable:
  key = (repr(module), want_masks)
  if key not in _FORWARD_CACHE:

    @jax.jit
    def forward(variables, mix):
      estimates, aux = module.apply(variables, mix, deterministic=True)
      masks = aux.get("masks") if want_masks and isinstance(aux, dict) else None
      return estimates, masks

    _FORWARD_CACHE[key] = forward
  return _FORWARD_CACHE[key]


def _model_apply_fn(module, variables) -> ApplyFn:
  def apply_fn(mix, want_masks=False):
    forward = _compiled_forward(module, bool(want_masks))
    estimates, masks = forward(variables, jnp.asarray(mix, jnp.float32))
    return np.asarray(estimates), None if masks is None else np.asarray(masks)

  return apply_fn


def abstract_variables(config, module=None):
  """The variable tree of ``config.model`` as ``ShapeDtypeStruct``s (nothing allocated)."""
  from trackformer_jax import models

  module = module or models.create_model(config.model)
  mix = jax.ShapeDtypeStruct((1, _config_channels(config), _INIT_FRAMES), jnp.float32)
  rngs = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
  return jax.eval_shape(lambda r, x: module.init(r, x, deterministic=True), rngs, mix)


def init_variables(config, rng: jax.Array):
  """Randomly initialised variables for ``config.model`` (the evaluation control)."""
  from trackformer_jax import models

  module = models.create_model(config.model)
  params_rng, dropout_rng = jax.random.split(rng)
  mix = jnp.zeros((1, _config_channels(config), _INIT_FRAMES), jnp.float32)
  variables = jax.jit(lambda r, x: module.init(r, x, deterministic=True))(
    {"params": params_rng, "dropout": dropout_rng}, mix
  )
  return module, variables


def model_from_variables(
  config, variables, *, name: str = "model", module=None, stem_map=None, path=None
) -> LoadedModel:
  """Wraps ``config`` and a variable dict ``{"params": ..., ...}`` as a ``LoadedModel``."""
  from trackformer_jax import models

  module = module or models.create_model(config.model)
  return LoadedModel(
    name=name,
    model_name=str(config.model.get("name", "unknown")),
    sample_rate_hz=_config_sample_rate(config),
    channels=_config_channels(config),
    num_outputs=int(config.model.get("num_outputs", 8)),
    apply_fn=_model_apply_fn(module, variables),
    config=config,
    variables=variables,
    stem_map=stem_map,
    path=path,
  )


def random_init_model(config, seed: int | None = None, *, name: str = "control") -> LoadedModel:
  """The same config at random initialisation (seed defaults to ``config.seed``)."""
  seed = int(config.get("seed", 0)) if seed is None else int(seed)
  module, variables = init_variables(config, jax.random.key(seed))
  return model_from_variables(config, variables, name=name, module=module)


def _read_config(path: pathlib.Path) -> ml_collections.ConfigDict:
  try:
    return ml_collections.ConfigDict(json.loads(path.read_text()))
  except (OSError, json.JSONDecodeError, TypeError) as e:
    raise ModelLoadError(f"{path}: cannot read the config ({e})") from e


def _as_variables(params_or_variables) -> dict:
  """``load_params`` gives params; the model wants ``{"params": ..., <other collections>}``."""
  if isinstance(params_or_variables, dict) and "params" in params_or_variables:
    return dict(params_or_variables)
  return {"params": params_or_variables}


def load_model(
  path: str | os.PathLike,
  *,
  checkpoint: str | int = "best",
  weights: str = "ema",
  use_exported_function: bool = False,
  name: str | None = None,
) -> LoadedModel:
  """Loads an exported folder or a training workdir.

  ``checkpoint`` (``best`` | ``latest`` | step) and ``weights`` (``ema``: the moving average
  where the run kept one; ``raw``) only matter for a workdir. With
  ``use_exported_function`` an exported folder runs its serialised ``jax.export`` function
  (needs no model code; fixed input shape) instead of the model built from its config.
  """
  path = pathlib.Path(path)
  name = name or path.resolve().name
  if not path.is_dir():
    raise ModelLoadError(f"{path}: no such model folder or workdir")
  if not (path / CONFIG_FILE).exists():
    raise ModelLoadError(f"{path}: neither an exported model nor a workdir (no {CONFIG_FILE})")
  config = _read_config(path / CONFIG_FILE)
  stem_map = read_stem_map(path)

  if (path / METADATA_FILE).exists():
    try:
      metadata = json.loads((path / METADATA_FILE).read_text())
    except json.JSONDecodeError as e:
      raise ModelLoadError(f"{path / METADATA_FILE}: not valid JSON ({e})") from e
    if metadata.get("format") != EXPORT_FORMAT:
      raise ModelLoadError(
        f"{path / METADATA_FILE}: format {metadata.get('format')!r}, expected {EXPORT_FORMAT!r}"
      )
    variables = _restore_exported_variables(path, config, abstract=not use_exported_function)
    if use_exported_function:
      model = _load_exported_function(path, metadata, variables, config, name, stem_map)
    else:
      model = model_from_variables(config, variables, name=name, stem_map=stem_map, path=str(path))
      model.sample_rate_hz = int(metadata["sample_rate_hz"])
      model.channels = int(metadata["channels"])
    model.source = _exported_source(metadata)
    return model

  from trackformer_jax import checkpoints

  try:
    config_from_ckpt, params, source = checkpoints.load_weights(
      str(path), which=checkpoint, weights=weights
    )
  except checkpoints.CheckpointError as e:
    raise ModelLoadError(str(e)) from e
  except (FileNotFoundError, ValueError, KeyError) as e:
    raise ModelLoadError(f"{path}: cannot load checkpoint {checkpoint!r} ({e})") from e
  config = ml_collections.ConfigDict(config_from_ckpt) if config_from_ckpt is not None else config
  model = model_from_variables(
    config, _as_variables(params), name=name, stem_map=stem_map, path=str(path)
  )
  model.source = source
  return model


def _exported_source(metadata: dict) -> dict[str, Any]:
  """The ``LoadedModel.source`` an export's metadata records (``export_workdir`` writes it)."""
  recorded = {"step": metadata.get("checkpoint_step"), "weights": metadata.get("weights")}
  return {key: value for key, value in recorded.items() if value is not None}


def _restore_exported_variables(path: pathlib.Path, config, *, abstract: bool):
  import orbax.checkpoint as ocp

  params_dir = (path / PARAMS_DIR).resolve()
  if not params_dir.exists():
    raise ModelLoadError(f"{path}: no {PARAMS_DIR}/ checkpoint")
  try:
    with ocp.StandardCheckpointer() as checkpointer:
      if abstract:
        # Restoring into the config's abstract tree checks shapes and never allocates twice.
        target = abstract_variables(config)
        return checkpointer.restore(params_dir, target)
      return checkpointer.restore(params_dir)
  except (ValueError, FileNotFoundError, KeyError) as e:
    raise ModelLoadError(f"{params_dir}: cannot restore the parameters ({e})") from e


def _load_exported_function(path, metadata, variables, config, name, stem_map) -> LoadedModel:
  info = metadata.get("exported_function")
  fn_path = path / EXPORTED_FN_FILE
  if not info or not fn_path.exists():
    raise ModelLoadError(f"{path}: exported without a jax.export function ({EXPORTED_FN_FILE})")
  exported = jax.export.deserialize(bytearray(fn_path.read_bytes()))
  backend = jax.default_backend()
  # jax.export names GPU platforms "cuda" / "rocm"; the backend calls itself "gpu".
  names = {"gpu": ("cuda", "rocm")}.get(backend, (backend,))
  if not set(names) & set(exported.platforms):
    raise ModelLoadError(
      f"{fn_path}: exported for {list(exported.platforms)}, this machine runs {backend}"
    )
  shape = tuple(int(s) for s in info["input_shape"])

  def apply_fn(mix, want_masks=False):
    mix = np.asarray(mix, np.float32)
    if mix.shape != shape:
      raise ValueError(f"the exported function takes input shape {shape}, got {mix.shape}")
    return np.asarray(exported.call(variables, jnp.asarray(mix))), None

  return LoadedModel(
    name=name,
    model_name=str(metadata["model_name"]),
    sample_rate_hz=int(metadata["sample_rate_hz"]),
    channels=int(metadata["channels"]),
    num_outputs=int(metadata["num_outputs"]),
    apply_fn=apply_fn,
    config=config,
    variables=variables,
    stem_map=stem_map,
    path=str(path),
    fixed_input_shape=shape,
  )


# --------------------------------------------------------------------------------------------
# Export


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
  variables = _as_variables(variables)
  metadata = {
    "format": EXPORT_FORMAT,
    "model_name": str(config.model.get("name", "unknown")),
    "sample_rate_hz": _config_sample_rate(config),
    "channels": _config_channels(config),
    "num_outputs": int(config.model.get("num_outputs", 8)),
    "version": trackformer_jax.__version__,
    "jax_version": jax.__version__,
    "exported_function": None,
    **(extra_metadata or {}),
  }

  staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
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


def parse_checkpoint(value: str) -> str | int:
  """``best`` | ``latest`` | a step number."""
  if value in ("best", "latest"):
    return value
  try:
    return int(value)
  except ValueError:
    raise argparse.ArgumentTypeError(
      f"--checkpoint: best, latest or a step, got {value!r}"
    ) from None


def add_weights_argument(parser: argparse.ArgumentParser) -> None:
  """``--weights ema|raw``: the one spelling of the choice for every tool that loads a workdir."""
  from trackformer_jax.checkpoints import WEIGHTS  # orbax: imported only where it is used

  parser.add_argument(
    "--weights",
    choices=WEIGHTS,
    default="ema",
    help="for a workdir: ema, the weights' moving average where the run kept one (the "
    "weights its validation scored; the default), or raw, the weights themselves",
  )


def get_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
    prog="python -m trackformer_jax.export", description="Export a trained separator."
  )
  parser.add_argument("--workdir", required=True, help="training workdir")
  parser.add_argument("--checkpoint", type=parse_checkpoint, default="best")
  add_weights_argument(parser)
  parser.add_argument("--out", required=True, help="destination folder, e.g. exported/x")
  parser.add_argument(
    "--jax-export",
    type=float,
    metavar="SECONDS",
    default=None,
    help="also serialise the forward pass with jax.export for segments of SECONDS",
  )
  parser.add_argument("--jax-export-batch", type=int, default=1)
  parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  args = get_parser().parse_args(argv)
  shape = None
  try:
    if args.jax_export is not None:
      config = _read_config(pathlib.Path(args.workdir) / CONFIG_FILE)
      shape = (args.jax_export_batch, round(args.jax_export * _config_sample_rate(config)))
    out = export_workdir(
      args.workdir,
      args.out,
      checkpoint=args.checkpoint,
      weights=args.weights,
      export_function_shape=shape,
      overwrite=args.overwrite,
    )
  except (ModelLoadError, FileExistsError) as e:
    print(f"export: {e}", file=sys.stderr)
    return 1
  print(f"exported {args.workdir} ({args.checkpoint}) to {out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
