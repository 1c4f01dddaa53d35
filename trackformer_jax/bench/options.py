"""What every suite may be told: sizes, budgets, the data, smoke mode."""

import dataclasses

import psutil

GIB = 2**30


def default_host_memory_gib() -> float:
  """Half this machine's RAM: the largest compiled step a suite will actually run here.

  Larger ones are still compiled and their memory reported, only not executed; half leaves
  room for the input pipeline, XLA's own workspace and whatever else the machine runs.
  """
  return round(psutil.virtual_memory().total / GIB / 2, 1)


@dataclasses.dataclass
class BenchOptions:
  """Options shared by the suites; the CLI fills them, tests pass tiny ones.

  Attributes:
    smoke: tiny sizes everywhere: checks the code paths and the JSON, measures nothing useful.
    data: the data spec the pipeline and seed-tables suites read (see ``configs/default.py``).
    device_memory_gib: the accelerator budget a full-size step is judged against (the seed's
      32 GB card; the seed: docs/history.md): a step whose compiled memory exceeds it is
      reported as OOM.
    host_memory_gib: steps and attention calls whose compiled memory exceeds this are
      compiled and reported but not run on this machine.
    memory_configs: only these memory-suite configs (e.g. ``("perf30", "convtasnet30")``);
      None: all of them.
    speed_scale: ``full`` (the configs as they are: for an accelerator) or ``reduced`` (the
      seed-tables' quarter-size models at 8 kHz: what a CPU can run).
    speed_batch_size: batch of the speed suite (None: the configs' own, 4).
    speed_steps: timed steps per configuration (after one untimed warm-up step).
    peak_tflops: the device's peak TFLOP/s for the dtype the step runs in (e.g. from its
      data sheet); with it the speed suite reports model FLOPs utilisation, without it None.
    favor_lengths: sequence lengths (tokens) of the favor suite.
    separate_minutes: song lengths of the separate suite.
    pipeline_batches: batches timed per segment length in the pipeline suite.
    seed_budget_seconds: training wall-clock of each seed-tables cell (compilation excluded).
    seed_eval_examples: evaluation examples per seed-tables cell.
    seed_eval_seconds: length of each seed-tables evaluation example.
  """

  smoke: bool = False
  data: str = "chorales"
  device_memory_gib: float = 32.0
  host_memory_gib: float = dataclasses.field(default_factory=default_host_memory_gib)
  memory_configs: tuple[str, ...] | None = None
  speed_scale: str = "full"
  speed_batch_size: int | None = None
  speed_steps: int = 3
  peak_tflops: float | None = None
  favor_lengths: tuple[int, ...] = (1024, 2048, 4096, 8192, 16384, 32768, 65536)
  separate_minutes: tuple[float, ...] = (3.0, 10.0)
  pipeline_batches: int = 20
  seed_budget_seconds: float = 90.0
  seed_eval_examples: int = 16
  seed_eval_seconds: float = 10.0
