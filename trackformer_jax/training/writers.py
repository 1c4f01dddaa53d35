"""Where training's numbers go: ``metrics.jsonl`` and TensorBoard on host 0, peak memory."""

from __future__ import annotations

import json
import pathlib
from collections.abc import Mapping
from typing import Any

import jax
from clu import metric_writers

from trackformer_jax import resources


class JsonLinesWriter(metric_writers.MetricWriter):
  """Appends one JSON object per ``write_scalars`` call: ``{"step": s, name: value, ...}``."""

  def __init__(self, path: pathlib.Path):
    self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    row = {"step": int(step)}
    row.update({name: float(value) for name, value in scalars.items()})
    self._file.write(json.dumps(row) + "\n")

  def write_summaries(self, step, values, metadata=None):
    pass

  def write_images(self, step, images):
    pass

  def write_videos(self, step, videos):
    pass

  def write_audios(self, step, audios, *, sample_rate):
    pass

  def write_texts(self, step, texts):
    pass

  def write_histograms(self, step, arrays, num_buckets=None):
    pass

  def write_pointcloud(self, step, point_clouds, *, point_colors=None, configs=None):
    pass

  def write_hparams(self, hparams):
    pass

  def flush(self):
    self._file.flush()

  def close(self):
    self._file.close()


def truncate_metrics(path: pathlib.Path, keep_through_step: int) -> None:
  """Drops rows after ``keep_through_step``: a resumed run rewrites them."""
  if not path.exists():
    return
  kept = []
  for line in path.read_text(encoding="utf-8").splitlines():
    try:
      if json.loads(line)["step"] <= keep_through_step:
        kept.append(line)
    except (ValueError, KeyError, TypeError):
      continue  # a line cut short by a kill
  # Whole or not at all: a kill during a plain rewrite would leave the file cut short.
  temporary = path.with_suffix(".jsonl.tmp")
  temporary.write_text("".join(row + "\n" for row in kept), encoding="utf-8")
  temporary.replace(path)


def create_writer(workdir: pathlib.Path, resume_step: int | None) -> metric_writers.MetricWriter:
  """TensorBoard (``workdir``) and ``workdir/metrics.jsonl`` on host 0; nothing elsewhere."""
  if jax.process_index() != 0:
    return metric_writers.MultiWriter([])
  jsonl = workdir / "metrics.jsonl"
  truncate_metrics(jsonl, -1 if resume_step is None else resume_step)
  return metric_writers.AsyncMultiWriter(
    [metric_writers.SummaryWriter(str(workdir / "tensorboard")), JsonLinesWriter(jsonl)]
  )


def peak_memory_bytes() -> int:
  """Peak memory of the first local device (GPU/TPU), else the process's peak RSS (CPU)."""
  device_peak = resources.device_peak_bytes()
  return resources.peak_rss_bytes() if device_peak is None else device_peak
