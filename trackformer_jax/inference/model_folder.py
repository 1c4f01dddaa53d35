"""The model folder's layout and its JSON files: format names, the stem map, atomic writes.

An exported folder holds everything separation needs and nothing training needs::

  exported/x/
    params/                  orbax checkpoint of the model's variables (params only, no optimiser)
    config.json              the training config (ConfigDict as JSON)
    metadata.json            sample rate, channels, model name, number of outputs, version
    stem_map.json            optional: which outputs make which stem (written by calibrate)
    inference.jaxexport      optional: serialised ``jax.export`` of the forward pass

A training workdir holds ``config.json`` (and may hold ``stem_map.json``) beside its
checkpoints. No pickle anywhere: orbax stores arrays, JSON the rest.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Any

import ml_collections
import numpy as np

from trackformer_jax.atomic_files import write_json_atomic
from trackformer_jax.data.tracks import STEM_NAMES

EXPORT_FORMAT = "trackformer_jax.export/1"
PARAMS_DIR = "params"
CONFIG_FILE = "config.json"
METADATA_FILE = "metadata.json"
STEM_MAP_FILE = "stem_map.json"
EXPORTED_FN_FILE = "inference.jaxexport"


class ModelLoadError(ValueError):
  """A model folder or workdir that cannot be loaded; the message names the path."""


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


def save_stem_map(model_dir: str | os.PathLike, stem_map: StemMap) -> pathlib.Path:
  """Stores ``stem_map`` with the model (exported folder or workdir); returns the file."""
  path = pathlib.Path(model_dir) / STEM_MAP_FILE
  write_json_atomic(path, stem_map.to_json())
  return path


def read_stem_map(model_dir: str | os.PathLike) -> StemMap | None:
  """The stem map stored with a model folder or workdir, or None where it has none."""
  path = pathlib.Path(model_dir) / STEM_MAP_FILE
  if not path.exists():
    return None
  return read_stem_map_file(path)


def read_stem_map_file(path: str | os.PathLike) -> StemMap:
  """A stem map from its own file (``calibrate --out``, ``separate --stem-map``)."""
  path = pathlib.Path(path)
  try:
    obj = json.loads(path.read_text())
  except OSError as e:
    raise ModelLoadError(f"{path}: cannot read the stem map ({e.strerror})") from e
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ModelLoadError(f"{path}: not valid JSON ({e})") from e
  if not isinstance(obj, dict):
    raise ModelLoadError(f"{path}: not a valid stem map (not a JSON object)")
  return StemMap.from_json(obj, source=str(path))


def check_stem_map(where: str | os.PathLike, stem_map: StemMap | None, num_outputs: int) -> None:
  """ModelLoadError unless ``stem_map`` (from the file ``where``) fits ``num_outputs``."""
  if stem_map is not None and stem_map.num_outputs != num_outputs:
    raise ModelLoadError(
      f"{where}: maps {stem_map.num_outputs} outputs, but the model has {num_outputs}; rerun "
      "calibrate on this model"
    )


def two_stem_map(stem_map: StemMap, stem: str) -> StemMap:
  """``stem`` and everything else (``no_<stem>``), as Demucs's ``--two-stems``."""
  if stem not in stem_map.stems:
    raise ModelLoadError(f"--two-stems {stem}: the stem map has {', '.join(stem_map.stems)}")
  rest = f"no_{stem}"
  return StemMap(
    output_to_stem=tuple(stem if s == stem else rest for s in stem_map.output_to_stem),
    stems=(stem, rest),
  )


def read_model_config(path: pathlib.Path) -> ml_collections.ConfigDict:
  """The ConfigDict in a model folder's or workdir's ``config.json`` at ``path``.

  Read by ``checkpoints.read_config``, the one reader of a run's config, its error given as
  a ``ModelLoadError``.
  """
  from trackformer_jax import checkpoints  # orbax is imported only once a config is read

  try:
    return checkpoints.read_config(pathlib.Path(path).parent)
  except checkpoints.CheckpointError as e:
    raise ModelLoadError(str(e)) from None
