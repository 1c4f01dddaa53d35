"""Loading a separator: ``load_model`` is the only place the tools get a model from.

``load_model(path)`` takes an exported folder (``model_folder``) or a training workdir
(``config.json`` plus orbax checkpoints, read through ``checkpoints.load_weights``) and
returns a ``LoadedModel``; ``random_init_model`` gives the same config untrained (the
evaluation control).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from trackformer_jax.inference.model_folder import (
  CONFIG_FILE,
  EXPORT_FORMAT,
  EXPORTED_FN_FILE,
  METADATA_FILE,
  PARAMS_DIR,
  STEM_MAP_FILE,
  ModelLoadError,
  StemMap,
  check_stem_map,
  read_model_config,
  read_stem_map,
)

# Long enough for any front end (default STFT n_fft is 1024); parameters do not depend on it.
_INIT_FRAMES = 8192


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


def config_sample_rate(config) -> int:
  """The sample rate a config's model runs at (44.1 kHz where the config predates the field)."""
  return int(config.get("sample_rate_hz", 44100))


def config_channels(config) -> int:
  """The channels a config's model takes (mono where the config predates the field)."""
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
  mix = jax.ShapeDtypeStruct((1, config_channels(config), _INIT_FRAMES), jnp.float32)
  rngs = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
  return jax.eval_shape(lambda r, x: module.init(r, x, deterministic=True), rngs, mix)


def init_variables(config, rng: jax.Array):
  """Randomly initialised variables for ``config.model`` (the evaluation control)."""
  from trackformer_jax import models

  module = models.create_model(config.model)
  params_rng, dropout_rng = jax.random.split(rng)
  mix = jnp.zeros((1, config_channels(config), _INIT_FRAMES), jnp.float32)
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
    sample_rate_hz=config_sample_rate(config),
    channels=config_channels(config),
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


def as_variables(params_or_variables) -> dict:
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
  config = read_model_config(path / CONFIG_FILE)
  stem_map = read_stem_map(path)
  # Everything that can be checked without the weights is, before they are read: a damaged
  # or foreign folder is one line naming it, not a traceback after minutes of work. A format
  # this version cannot read is named first, before its config is judged.

  if (path / METADATA_FILE).exists():
    try:
      metadata = json.loads((path / METADATA_FILE).read_text())
    except json.JSONDecodeError as e:
      raise ModelLoadError(f"{path / METADATA_FILE}: not valid JSON ({e})") from e
    if metadata.get("format") != EXPORT_FORMAT:
      raise ModelLoadError(
        f"{path / METADATA_FILE}: format {metadata.get('format')!r}, expected {EXPORT_FORMAT!r}"
      )
    missing = [k for k in ("sample_rate_hz", "channels", "num_outputs") if k not in metadata]
    if missing:
      raise ModelLoadError(f"{path / METADATA_FILE}: no {', '.join(missing)}")
    check_stem_map(path / STEM_MAP_FILE, stem_map, int(metadata["num_outputs"]))
    target = None if use_exported_function else checked_abstract_variables(path, config)
    variables = _restore_exported_variables(path, target)
    if use_exported_function:
      model = _load_exported_function(path, metadata, variables, config, name, stem_map)
    else:
      model = model_from_variables(config, variables, name=name, stem_map=stem_map, path=str(path))
      model.sample_rate_hz = int(metadata["sample_rate_hz"])
      model.channels = int(metadata["channels"])
    model.source = _exported_source(metadata)
    return model

  from trackformer_jax import checkpoints

  checked_abstract_variables(path, config)
  check_stem_map(path / STEM_MAP_FILE, stem_map, int(config.model.get("num_outputs", 8)))
  try:
    config_from_ckpt, params, source = checkpoints.load_weights(
      str(path), which=checkpoint, weights=weights
    )
  except checkpoints.CheckpointError as e:
    raise ModelLoadError(str(e)) from e
  except Exception as e:  # noqa: BLE001  orbax and tensorstore raise bare Exception
    raise ModelLoadError(f"{path}: cannot load checkpoint {checkpoint!r} ({_short(e)})") from e
  config = ml_collections.ConfigDict(config_from_ckpt) if config_from_ckpt is not None else config
  model = model_from_variables(
    config, as_variables(params), name=name, stem_map=stem_map, path=str(path)
  )
  model.source = source
  return model


def _exported_source(metadata: dict) -> dict[str, Any]:
  """The ``LoadedModel.source`` an export's metadata records (``export_workdir`` writes it)."""
  recorded = {"step": metadata.get("checkpoint_step"), "weights": metadata.get("weights")}
  return {key: value for key, value in recorded.items() if value is not None}


def checked_abstract_variables(path: pathlib.Path, config):
  """``abstract_variables(config)``, or ModelLoadError naming the field the config lacks."""
  model = config.get("model")
  if model is None:
    raise ModelLoadError(f"{path / CONFIG_FILE}: no model section")
  try:
    return abstract_variables(config)
  except (AttributeError, KeyError) as e:
    field = str(e).strip("\"' ")
    raise ModelLoadError(
      f"{path / CONFIG_FILE}: model.{field} is missing, and model {model.get('name')!r} needs "
      "it (a folder from another version?)"
    ) from e
  except (TypeError, ValueError) as e:
    raise ModelLoadError(f"{path / CONFIG_FILE}: cannot build the model ({_short(e)})") from e


def _short(error: BaseException) -> str:
  """The first line of the innermost cause: tensorstore appends pages of spec JSON."""
  while error.__cause__ is not None:
    error = error.__cause__
  line = (str(error).strip().splitlines() or [type(error).__name__])[0]
  return line.split(" [tensorstore_spec=")[0][:300]


# Written by every orbax OCDBT save; without them the restore fails deep inside tensorstore.
_PARAMS_FILES = ("_METADATA", "manifest.ocdbt")


def _restore_exported_variables(path: pathlib.Path, target):
  """The exported variables, into ``target`` (abstract: checks shapes, allocates once) or,
  with None, as saved."""
  import orbax.checkpoint as ocp

  params_dir = (path / PARAMS_DIR).resolve()
  if not params_dir.is_dir():
    raise ModelLoadError(f"{path}: no {PARAMS_DIR}/ checkpoint")
  missing = [name for name in _PARAMS_FILES if not (params_dir / name).is_file()]
  if missing:
    raise ModelLoadError(
      f"{params_dir}: incomplete parameters checkpoint (no {', '.join(missing)}); export "
      "the model again"
    )
  # Installed before the restore: the orphaned reads may report at any moment after the
  # first failed one, even while the one-line message is being printed.
  from trackformer_jax import checkpoints

  silence = checkpoints.OrphanedReadReports(params_dir)
  try:
    with ocp.StandardCheckpointer() as checkpointer:
      variables = checkpointer.restore(params_dir, *([] if target is None else [target]))
  except Exception as e:  # noqa: BLE001  orbax and tensorstore raise bare Exception
    raise ModelLoadError(
      f"{params_dir}: the parameters are damaged or do not fit the config ({_short(e)})"
    ) from e
  silence.remove()  # every read finished: nothing is left to report
  return variables


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
