"""Pipeline suite: batches per second of the training input pipeline, 3 s and 30 s segments.

The stream the trainer reads (``input_pipeline.train_batches`` with ``with_stems=False``:
mixtures only, as MixIT training needs), at perf3's and perf30's format (44.1 kHz mono,
batch 4) on ``--data`` (the bundled corpus by default: 44.1 kHz stereo FLAC/WAV decoded,
downmixed and cropped on the fly). Compare with the speed suite: the pipeline must make
batches faster than the step eats them.
"""

from trackformer_jax.bench.experiments import sized_config, smoke_config
from trackformer_jax.bench.options import BenchOptions
from trackformer_jax.input_pipeline import run_pipeline_benchmark

SECONDS = (3, 30)
SMOKE_SECONDS = (0.5, 1)


def run(options: BenchOptions, results: dict) -> list[dict]:
  del results
  records = []
  for seconds in SMOKE_SECONDS if options.smoke else SECONDS:
    if options.smoke:
      config = smoke_config("performer", seconds)
    else:
      config = sized_config(f"perf{seconds}")
    config.data = options.data
    num_batches = 2 if options.smoke else options.pipeline_batches
    record = run_pipeline_benchmark(config, num_batches, with_stems=False)
    record["config"] = "test" if options.smoke else f"perf{seconds}"
    print(f"pipeline {seconds:g} s: {record['batches_per_second']:.2f} batches/s", flush=True)
    records.append(record)
  return records


def summarize(records: list[dict]) -> dict:
  return {f"batches_per_second_{r['segment_seconds']:g}s": r["batches_per_second"] for r in records}
