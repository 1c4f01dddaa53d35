"""What the command-line tools (separate, evaluate, export, calibrate) share.

* ``parse_tool_args(get_parser, argv)``: each tool's ``main`` starts with it. It calls
  ``quiet_startup()`` first, before jax, orbax or TensorFlow is imported, so that a command
  prints what it did and its own warnings, not the libraries' start-up notices.
* ``--model`` (one name in every tool; ``--workdir``, the older spelling, still works),
  ``-d/--device cpu|gpu`` and ``--weights ema|raw``.

Nothing here imports jax, orbax or TensorFlow at module level: the tools build their parsers
from it, and ``--help`` answers without loading them.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
from collections.abc import Callable, Sequence

# checkpoints.WEIGHTS, spelled here so that building a parser does not import orbax
# (tests/test_separate_cli.py checks that the two agree).
WEIGHTS = ("ema", "raw")
DEVICES = ("cpu", "gpu")
# What separate does with stems beyond what the output format holds (see stem_files).
CLIP_MODES = ("rescale", "clamp")

# What orbax logs (absl, WARNING) on every read-only restore of a workdir: notes about its
# own options and a metadata file that model folders do not need, none of which the user
# can act on. Errors, and every other warning, still print.
ORBAX_RESTORE_NOTICES = (
  "CheckpointManagerOptions.read_only=True, setting save_interval_steps=0",
  "Given directory is read only=",
  "Metadata file does not exist:",
)


class DeviceError(ValueError):
  """``--device`` asks for a device this machine does not have."""


class _DropRestoreNotices(logging.Filter):
  def filter(self, record: logging.LogRecord) -> bool:
    if record.levelno >= logging.ERROR:
      return True
    return not record.getMessage().startswith(ORBAX_RESTORE_NOTICES)


def quiet_startup() -> None:
  """Silences the libraries' start-up notices; call before jax, orbax or TF is imported.

  * TensorFlow (imported by some data sources): its oneDNN notice is printed at import
    whatever the log level; ``TF_ENABLE_ONEDNN_OPTS=0`` drops it, and changes nothing here,
    where TF only reads files. ``TF_CPP_MIN_LOG_LEVEL=1`` (read by TF and XLA alike) drops
    the C++ INFO lines, and with them absl's "All log messages before absl::InitializeLog()"
    banner that precedes the first one; warnings and errors still print.
  * libtpu: ``TPU_MIN_LOG_LEVEL`` / ``TPU_STDERR_LOG_LEVEL`` at warning.
  * orbax: the notices of ``ORBAX_RESTORE_NOTICES`` (a filter on absl's logger).

  Values the user has set in the environment are kept.
  """
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
  os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
  os.environ.setdefault("TPU_MIN_LOG_LEVEL", "1")
  os.environ.setdefault("TPU_STDERR_LOG_LEVEL", "1")
  absl_logger = logging.getLogger("absl")
  if not any(isinstance(f, _DropRestoreNotices) for f in absl_logger.filters):
    absl_logger.addFilter(_DropRestoreNotices())


def add_model_argument(parser: argparse.ArgumentParser, help: str, *, repeat: bool = False):
  """``--model MODEL`` (``repeat``: given once or more, a list); ``--workdir`` is its hidden
  older spelling. ``parse_tool_args`` requires it."""
  action = "append" if repeat else "store"
  suffix = "; repeat to compare" if repeat else ""
  parser.add_argument("--model", action=action, default=None, metavar="MODEL", help=help + suffix)
  parser.add_argument("--workdir", action=action, dest="model", help=argparse.SUPPRESS)


def parse_tool_args(
  get_parser: Callable[[], argparse.ArgumentParser], argv: Sequence[str] | None
) -> argparse.Namespace:
  """A model tool's start: ``quiet_startup()``, then ``get_parser()``'s parse of ``argv``;
  exits through ``parser.error`` (status 2) when ``--model`` was not given."""
  quiet_startup()
  parser = get_parser()
  args = parser.parse_args(argv)
  if not args.model:
    parser.error("the following arguments are required: --model")
  return args


def add_device_argument(parser: argparse.ArgumentParser) -> None:
  parser.add_argument(
    "-d",
    "--device",
    choices=DEVICES,
    default=None,
    help="where the model runs (default: a GPU where JAX finds one, else the CPU)",
  )


def select_device(device: str | None) -> None:
  """Makes ``device`` (``cpu`` | ``gpu`` | None: JAX's choice) where the model runs.

  Call before the model is loaded. ``cpu`` keeps JAX from starting any accelerator (no GPU
  memory is taken) when it has not started one yet. Raises ``DeviceError`` for ``gpu`` on a
  machine where JAX finds none.
  """
  if device is None:
    return
  import jax

  if device == "cpu":
    jax.config.update("jax_platforms", "cpu")
  elif (jax.config.jax_platforms or "gpu") == "cpu":
    jax.config.update("jax_platforms", None)  # --device gpu outranks JAX_PLATFORMS=cpu
  try:
    chosen = jax.devices(device)[0]
  except RuntimeError:
    found = ", ".join(sorted({d.platform for d in jax.devices()}))
    raise DeviceError(
      f"--device {device}: JAX finds no GPU here (only {found}); install JAX with CUDA "
      "(pip install 'jax[cuda12]') or use --device cpu"
    ) from None
  jax.config.update("jax_default_device", chosen)


def add_weights_argument(parser: argparse.ArgumentParser) -> None:
  """``--weights ema|raw``: the one spelling of the choice for every tool that loads a workdir."""
  parser.add_argument(
    "--weights",
    choices=WEIGHTS,
    default="ema",
    help="for a workdir: ema, the weights' moving average where the run kept one (the "
    "weights its validation scored; the default), or raw, the weights themselves",
  )


def lazy_attribute(module_globals: dict, names: dict[str, str], name: str):
  """For a command-line module's ``__getattr__`` (PEP 562): the names it re-exports from the
  libraries, imported on first use (so that its ``--help`` does not import them) and kept.

  ``names`` maps each name to ``"package.module"`` (the module itself) or
  ``"package.module:attribute"``.
  """
  target = names.get(name)
  if target is None:
    raise AttributeError(f"module {module_globals['__name__']!r} has no attribute {name!r}")
  module_name, _, attribute = target.partition(":")
  value = importlib.import_module(module_name)
  if attribute:
    value = getattr(value, attribute)
  module_globals[name] = value
  return value


def check_folder_name(option: str, name: str | None) -> None:
  """ValueError unless ``name`` (when given) is one plain folder name, not a path."""
  if name is not None and (name in ("", ".", "..") or "/" in name or "\\" in name):
    raise ValueError(f"{option} {name!r}: must be a folder name, not a path")


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
