"""Export a trained separator: the command line over ``inference.exporting``.

::

  python -m trackformer_jax.export --workdir runs/x [--checkpoint best] [--weights ema|raw]
      --out exported/x

The library (model folders, ``load_model``, ``export_model``, ``StemMap``) lives in
``trackformer_jax.inference``; the names below are re-exported, so ``export.load_model``
and the rest keep working for the tools that import them from here.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
from collections.abc import Sequence

from trackformer_jax.atomic_files import write_json_atomic
from trackformer_jax.inference.exporting import export_model, export_workdir
from trackformer_jax.inference.loading import (
  LoadedModel,
  abstract_variables,
  config_sample_rate,
  init_variables,
  load_model,
  model_from_variables,
  random_init_model,
)
from trackformer_jax.inference.model_folder import (
  CONFIG_FILE,
  EXPORT_FORMAT,
  EXPORTED_FN_FILE,
  METADATA_FILE,
  PARAMS_DIR,
  STEM_MAP_FILE,
  STEM_NAMES,
  ModelLoadError,
  StemMap,
  read_model_config,
  read_stem_map,
  save_stem_map,
)

__all__ = [
  "CONFIG_FILE",
  "EXPORTED_FN_FILE",
  "EXPORT_FORMAT",
  "METADATA_FILE",
  "PARAMS_DIR",
  "STEM_MAP_FILE",
  "STEM_NAMES",
  "LoadedModel",
  "ModelLoadError",
  "StemMap",
  "abstract_variables",
  "add_weights_argument",
  "export_model",
  "export_workdir",
  "get_parser",
  "init_variables",
  "load_model",
  "main",
  "model_from_variables",
  "parse_checkpoint",
  "random_init_model",
  "read_stem_map",
  "save_stem_map",
  "write_json_atomic",
]


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
      config = read_model_config(pathlib.Path(args.workdir) / CONFIG_FILE)
      shape = (args.jax_export_batch, round(args.jax_export * config_sample_rate(config)))
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
