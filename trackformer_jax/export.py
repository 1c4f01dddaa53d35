"""Export a trained separator: the command line over ``inference.exporting``.

::

  python -m trackformer_jax.export --model runs/x [--checkpoint best] [--weights ema|raw]
      [-d cpu|gpu] --out exported/x      (--workdir: the older name of --model)

The library (model folders, ``load_model``, ``export_model``, ``StemMap``) lives in
``trackformer_jax.inference``; the names below are re-exported, so ``export.load_model``
and the rest keep working for the tools that import them from here.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
from collections.abc import Sequence

from trackformer_jax import command_line
from trackformer_jax.command_line import add_weights_argument, parse_checkpoint

_LOADING_NAMES = ("LoadedModel", "abstract_variables", "config_sample_rate", "init_variables")
_LOADING_NAMES += ("load_model", "model_from_variables", "random_init_model")
_FOLDER_NAMES = ("CONFIG_FILE", "EXPORT_FORMAT", "EXPORTED_FN_FILE", "METADATA_FILE")
_FOLDER_NAMES += ("PARAMS_DIR", "STEM_MAP_FILE", "STEM_NAMES", "ModelLoadError", "StemMap")
_FOLDER_NAMES += ("read_model_config", "read_stem_map", "save_stem_map")
# The library names this module has always offered, imported on first use: --help stays fast.
_LAZY_NAMES = {
  "write_json_atomic": "trackformer_jax.atomic_files:write_json_atomic",
  "export_model": "trackformer_jax.inference.exporting:export_model",
  "export_workdir": "trackformer_jax.inference.exporting:export_workdir",
  **{name: f"trackformer_jax.inference.loading:{name}" for name in _LOADING_NAMES},
  **{name: f"trackformer_jax.inference.model_folder:{name}" for name in _FOLDER_NAMES},
}

__all__ = [*_LAZY_NAMES, "add_weights_argument", "get_parser", "main", "parse_checkpoint"]


def __getattr__(name: str):
  return command_line.lazy_attribute(globals(), _LAZY_NAMES, name)


def get_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
    prog="python -m trackformer_jax.export", description="Export a trained separator."
  )
  command_line.add_model_argument(parser, "the training workdir to export")
  parser.add_argument("--checkpoint", type=parse_checkpoint, default="best")
  add_weights_argument(parser)
  command_line.add_device_argument(parser)
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
  args = command_line.parse_tool_args(get_parser, argv)
  from trackformer_jax.inference.exporting import export_workdir
  from trackformer_jax.inference.loading import config_sample_rate
  from trackformer_jax.inference.model_folder import CONFIG_FILE, ModelLoadError, read_model_config

  shape = None
  try:
    command_line.select_device(args.device)
    if args.jax_export is not None:
      config = read_model_config(pathlib.Path(args.model) / CONFIG_FILE)
      shape = (args.jax_export_batch, round(args.jax_export * config_sample_rate(config)))
    out = export_workdir(
      args.model,
      args.out,
      checkpoint=args.checkpoint,
      weights=args.weights,
      export_function_shape=shape,
      overwrite=args.overwrite,
    )
  except (ModelLoadError, FileExistsError, command_line.DeviceError) as e:
    print(f"export: {e}", file=sys.stderr)
    return 1
  print(f"exported {args.model} ({args.checkpoint}) to {out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
