"""``python -m trackformer_jax.bench --suite SUITE [--suite ...] [--smoke] --out bench.json``

Runs the suites in order, prints what each measures as it goes, checks the JSON against
``bench.schema`` and writes it after every suite (an interrupted run keeps what it measured).
``--update`` merges into an existing ``--out`` so suites can be run at different times;
``--markdown`` renders the tables of everything in the JSON.
"""

import argparse
import contextlib
import datetime
import fcntl
import importlib
import json
import math
import os
import pathlib
import platform
import shlex
import subprocess
import sys
from collections.abc import Sequence

from trackformer_jax.atomic_files import write_json_atomic
from trackformer_jax.bench import SUITES, suite_key
from trackformer_jax.bench.options import GIB, BenchOptions, default_host_memory_gib


def describe_machine() -> dict:
  """CPU model and cores, RAM, accelerator (or none): where the numbers were measured."""
  import jax
  import psutil

  cpu = platform.processor() or platform.machine()
  try:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        cpu = line.split(":", 1)[1].strip()
        break
  except OSError:
    pass
  devices = jax.devices()
  accelerators = [d.device_kind for d in devices if d.platform != "cpu"]
  return {
    "cpu": cpu,
    "cpu_cores": len(os.sched_getaffinity(0)),
    "ram_gib": round(psutil.virtual_memory().total / GIB, 1),
    "jax_backend": devices[0].platform,
    "accelerator": ", ".join(accelerators) if accelerators else "none",
  }


def _git_commit() -> str:
  try:
    return subprocess.run(
      ["git", "rev-parse", "--short", "HEAD"],
      capture_output=True,
      text=True,
      check=True,
      cwd=pathlib.Path(__file__).resolve().parents[2],
    ).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return "unknown"


def json_safe(value):
  """NaN and infinities become null: JSON has no spelling for them."""
  if isinstance(value, float) and not math.isfinite(value):
    return None
  if isinstance(value, dict):
    return {str(k): json_safe(v) for k, v in value.items()}
  if isinstance(value, list | tuple):
    return [json_safe(v) for v in value]
  return value


def get_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
    prog="python -m trackformer_jax.bench", description=__doc__.split("\n\n")[0].strip("`")
  )
  parser.add_argument(
    "--suite",
    action="append",
    choices=(*SUITES, "all"),
    required=True,
    help="suite to run (repeatable); all runs every suite, memory first",
  )
  parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks code and JSON only")
  parser.add_argument("--out", default="bench.json", help="JSON file to write (default bench.json)")
  parser.add_argument("--update", action="store_true", help="merge into an existing --out")
  parser.add_argument("--markdown", help="also write the tables of --out as Markdown here")
  parser.add_argument("--data", default="chorales", help="data spec for pipeline and seed-tables")
  parser.add_argument("--device-memory-gib", type=float, default=32.0, help="OOM budget (GiB)")
  parser.add_argument(
    "--host-memory-gib",
    type=float,
    default=None,
    help=f"largest step actually run here (default half the RAM: {default_host_memory_gib()})",
  )
  parser.add_argument(
    "--memory-configs", nargs="+", default=None, help="memory suite: only these configs"
  )
  parser.add_argument(
    "--speed-scale",
    choices=("full", "reduced"),
    default="full",
    help="speed suite: the configs as they are, or the seed-tables' quarter-size 8 kHz models",
  )
  parser.add_argument("--speed-batch", type=int, default=None, help="speed suite batch size")
  parser.add_argument("--speed-steps", type=int, default=3, help="timed steps per config")
  parser.add_argument(
    "--peak-tflops",
    type=float,
    default=None,
    help="the device's peak TFLOP/s for the step's dtype: the speed suite then reports MFU",
  )
  parser.add_argument(
    "--favor-lengths", type=int, nargs="+", default=None, help="favor suite lengths (tokens)"
  )
  parser.add_argument(
    "--separate-minutes", type=float, nargs="+", default=None, help="song lengths (minutes)"
  )
  parser.add_argument("--pipeline-batches", type=int, default=20, help="batches timed")
  parser.add_argument(
    "--seed-budget", type=float, default=90.0, help="seed-tables training seconds per cell"
  )
  parser.add_argument(
    "--seed-eval-examples", type=int, default=16, help="seed-tables evaluation examples"
  )
  parser.add_argument(
    "--seed-eval-seconds", type=float, default=10.0, help="seed-tables evaluation length"
  )
  return parser


def options_from_args(args: argparse.Namespace) -> BenchOptions:
  options = BenchOptions(
    smoke=args.smoke,
    data=args.data,
    device_memory_gib=args.device_memory_gib,
    memory_configs=tuple(args.memory_configs) if args.memory_configs else None,
    speed_scale=args.speed_scale,
    speed_batch_size=args.speed_batch,
    speed_steps=args.speed_steps,
    peak_tflops=args.peak_tflops,
    pipeline_batches=args.pipeline_batches,
    seed_budget_seconds=args.seed_budget,
    seed_eval_examples=args.seed_eval_examples,
    seed_eval_seconds=args.seed_eval_seconds,
  )
  if args.host_memory_gib is not None:
    options.host_memory_gib = args.host_memory_gib
  if args.favor_lengths:
    options.favor_lengths = tuple(args.favor_lengths)
  if args.separate_minutes:
    options.separate_minutes = tuple(args.separate_minutes)
  return options


def write_results(results: dict, path: pathlib.Path) -> None:
  from trackformer_jax.bench.schema import check_results

  results = json_safe(results)
  check_results(results)
  path.parent.mkdir(parents=True, exist_ok=True)
  write_json_atomic(path, results, indent=1)


def merge_records(previous: list | None, records: list, module) -> list:
  """``records`` after the earlier records they do not replace (suites with ``record_key``).

  Only the memory suite has identities finer than the suite: a run of a few configs adds to
  (or replaces) those configs and keeps the others.
  """
  if not previous or not hasattr(module, "record_key"):
    return records
  fresh = {module.record_key(r) for r in records}
  return [r for r in previous if module.record_key(r) not in fresh] + records


@contextlib.contextmanager
def locked(path: pathlib.Path):
  """An exclusive lock beside ``path``: several ``--update`` runs may share one file."""
  path.parent.mkdir(parents=True, exist_ok=True)
  with open(path.with_name(path.name + ".lock"), "w") as handle:
    fcntl.flock(handle, fcntl.LOCK_EX)
    yield


def main(argv: Sequence[str] | None = None) -> int:
  args = get_parser().parse_args(argv)
  options = options_from_args(args)
  suites = SUITES if "all" in args.suite else [s for s in SUITES if s in args.suite]
  out = pathlib.Path(args.out)
  meta = {
    "date_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M"),
    "command": "python -m trackformer_jax.bench "
    + shlex.join(sys.argv[1:] if argv is None else argv),
    "machine": describe_machine(),
    "jax_version": importlib.import_module("jax").__version__,
    "git_commit": _git_commit(),
    "smoke": options.smoke,
    # Compiler flags change compile time; the memory figures were checked not to depend on
    # the backend optimisation level (buffer assignment happens before code generation).
    "xla_flags": os.environ.get("XLA_FLAGS", ""),
  }
  results: dict = {}
  if args.update and out.exists():
    results = json.loads(out.read_text())
  measured: dict[str, tuple[list, object, float]] = {}  # this invocation's suites
  for suite in suites:
    key = suite_key(suite)
    module = importlib.import_module(f"trackformer_jax.bench.{key}")
    records = module.run(options, results)
    for record in records:
      record.setdefault("measured_utc", meta["date_utc"])
      record.setdefault("command", meta["command"])
    # Timings on a shared host vary with its load: keep the load each suite ran under.
    load = os.getloadavg()[0]
    measured[key] = (records, module, load)
    with locked(out):
      # Re-read under the lock: another --update run may have written since we started.
      results = json.loads(out.read_text()) if args.update and out.exists() else {}
      results.setdefault("summary", {})
      for done, (fresh, done_module, done_load) in measured.items():
        results[done] = merge_records(results.get(done), fresh, done_module)
        results["summary"][done] = done_module.summarize(results[done])
        # Each suite remembers its own run: --update mixes suites from several invocations.
        results["summary"][done]["run"] = {
          **{k: meta[k] for k in ("date_utc", "command", "git_commit")},
          "load_average_1min_at_end": done_load,
        }
      results["meta"] = meta
      write_results(results, out)
  print(json.dumps(json_safe(results.get("summary", {})), indent=1))
  if args.markdown:
    from trackformer_jax.bench.tables import markdown_tables

    pathlib.Path(args.markdown).write_text(markdown_tables(json.loads(out.read_text())))
  return 0


if __name__ == "__main__":
  sys.exit(main())
