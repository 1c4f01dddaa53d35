"""The repository's experiment configs by name (``load_config("perf:30")``), and the one
length every part derives from a config (``segment_samples``).

The files in ``configs/`` import each other as ``configs.*``, so they load from the repository
root, where ``python -m trackformer_jax.main`` runs; this loads them from anywhere, the way
``--config=configs/<name>.py:<arg>`` does on the command line.
"""

from __future__ import annotations

import importlib
import pathlib
import sys

import ml_collections

REPOSITORY = pathlib.Path(__file__).resolve().parents[2]
CONFIG_DIR = REPOSITORY / "configs"


def segment_samples(config: ml_collections.ConfigDict) -> int:
  """The length T of one training example in samples."""
  return int(round(config.segment_seconds * config.sample_rate_hz))


def load_config(spec: str) -> ml_collections.ConfigDict:
  """``configs/<name>.py``'s ``get_config([arg])`` for ``spec`` = ``name[:arg]``.

  ``name`` may also be written as the file (``configs/perf.py:30``), as on the command line.

  Raises:
    ValueError: no such file in ``configs/``.
  """
  name, _, arg = str(spec).partition(":")
  name = pathlib.Path(name).stem if name.endswith(".py") else name
  if not (CONFIG_DIR / f"{name}.py").is_file():
    raise ValueError(f"{CONFIG_DIR / name}.py: no such config")
  if str(REPOSITORY) not in sys.path:
    sys.path.insert(0, str(REPOSITORY))
  module = importlib.import_module(f"configs.{name}")
  return module.get_config(arg) if arg else module.get_config()
