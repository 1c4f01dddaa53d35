"""Separate suite: real-time factor and peak memory separating long 44.1 kHz stereo songs.

Each song (3 and 10 minutes; synthetic, written here) is separated to a folder by
``Separator.separate_to_folder``, the CLI's streaming path, in a fresh child process, so that
its peak resident memory (``resources.peak_rss_bytes``) belongs to that song alone. The
model is the quick-size Performer (``configs/quick.py``: 16 kHz mono, 4 layers of width 128)
**randomly initialised**: the cost of separating does not depend on the weights, and no
trained model ships with the repository. Compilation is paid on a 5 s warm-up clip before timing.

  python -m trackformer_jax.bench.separate SONG OUT_DIR [--smoke]   # the child; prints JSON
"""

import json
import pathlib
import subprocess
import sys
import tempfile

import numpy as np
import soundfile

from trackformer_jax.bench.options import BenchOptions
from trackformer_jax.resources import peak_rss_bytes
from trackformer_jax.training.config_files import REPOSITORY

SAMPLE_RATE_HZ = 44100
CHANNELS = 2
SMOKE_SECONDS = (2.0,)
_BLOCK_SECONDS = 10


def write_test_song(path: pathlib.Path, seconds: float, seed: int = 0) -> None:
  """A stereo 16-bit song of ``seconds``: a moving chord, a bass line and noise bursts.

  Written in 10 s blocks so that making a 10-minute song needs no 10-minute array.
  """
  rng = np.random.default_rng(seed)
  frames = int(round(seconds * SAMPLE_RATE_HZ))
  with soundfile.SoundFile(
    path, "w", samplerate=SAMPLE_RATE_HZ, channels=CHANNELS, subtype="PCM_16"
  ) as song:
    for start in range(0, frames, _BLOCK_SECONDS * SAMPLE_RATE_HZ):
      n = min(_BLOCK_SECONDS * SAMPLE_RATE_HZ, frames - start)
      t = (start + np.arange(n)) / SAMPLE_RATE_HZ
      root = 220.0 * 2 ** (np.floor(t / 2.0) % 5 / 12)
      chord = sum(np.sin(2 * np.pi * root * ratio * t) for ratio in (1.0, 1.25, 1.5))
      bass = np.sin(2 * np.pi * root / 4 * t)
      beat = np.exp(-((t * 2.0) % 1.0) * 30) * rng.standard_normal(n)
      left = 0.15 * chord + 0.2 * bass + 0.2 * beat
      right = 0.1 * chord + 0.2 * bass + 0.25 * beat
      song.write(np.stack([left, right], axis=1).astype(np.float32))


def separate_in_this_process(song: str, out_dir: str, smoke: bool) -> dict:
  """The child's work: load a random model, warm up, separate ``song`` to ``out_dir``."""
  import time

  import psutil

  from trackformer_jax.bench.experiments import load_config
  from trackformer_jax.inference.loading import random_init_model
  from trackformer_jax.separator import Separator

  config = load_config("test" if smoke else "quick")
  model = random_init_model(config, seed=0, name="random-quick")
  separator = Separator(model, batch_size=4)
  warmup_clip = 0.01 * np.random.default_rng(1).standard_normal((CHANNELS, 5 * SAMPLE_RATE_HZ))
  start = time.perf_counter()
  separator.separate_array(warmup_clip.astype(np.float32), SAMPLE_RATE_HZ)
  warmup_seconds = time.perf_counter() - start
  rss_before = psutil.Process().memory_info().rss
  start = time.perf_counter()
  separator.separate_to_folder(song, out_dir)
  seconds = time.perf_counter() - start
  duration = soundfile.info(song).duration
  return {
    "model": "performer",
    "config": "test" if smoke else "quick",
    "weights": "random initialisation",
    "model_sample_rate_hz": int(config.sample_rate_hz),
    "segment_seconds": float(config.segment_seconds),
    "song_seconds": float(duration),
    "sample_rate_hz": SAMPLE_RATE_HZ,
    "channels": CHANNELS,
    "warmup_seconds": warmup_seconds,
    "separate_seconds": seconds,
    "real_time_factor": seconds / duration,
    "rss_before_bytes": int(rss_before),
    "peak_rss_bytes": peak_rss_bytes(),
  }


def run(options: BenchOptions, results: dict) -> list[dict]:
  del results
  lengths = SMOKE_SECONDS if options.smoke else tuple(60 * m for m in options.separate_minutes)
  records = []
  with tempfile.TemporaryDirectory(prefix="bench-separate-") as folder:
    for i, seconds in enumerate(lengths):
      song = pathlib.Path(folder) / f"song{i}.wav"
      write_test_song(song, seconds, seed=i)
      command = [sys.executable, "-m", "trackformer_jax.bench.separate", str(song)]
      command += [str(pathlib.Path(folder) / f"separated{i}")] + (
        ["--smoke"] if options.smoke else []
      )
      finished = subprocess.run(
        command, capture_output=True, text=True, check=False, cwd=REPOSITORY
      )
      if finished.returncode != 0:
        raise RuntimeError(f"separating a {seconds:g} s song failed:\n{finished.stderr[-3000:]}")
      record = json.loads(finished.stdout.strip().splitlines()[-1])
      print(
        f"separate {seconds:g} s: real-time factor {record['real_time_factor']:.3f}, "
        f"peak RSS {record['peak_rss_bytes'] / 2**20:.0f} MiB",
        flush=True,
      )
      records.append(record)
      song.unlink()
  return records


def summarize(records: list[dict]) -> dict:
  """How much the peak grows from the shortest song to the longest (streaming: ~1)."""
  if len(records) < 2:
    return {}
  shortest = min(records, key=lambda r: r["song_seconds"])
  longest = max(records, key=lambda r: r["song_seconds"])
  return {
    "peak_rss_ratio_longest_over_shortest": longest["peak_rss_bytes"] / shortest["peak_rss_bytes"],
    "length_ratio_longest_over_shortest": longest["song_seconds"] / shortest["song_seconds"],
  }


if __name__ == "__main__":
  arguments = [a for a in sys.argv[1:] if a != "--smoke"]
  print(json.dumps(separate_in_this_process(*arguments, smoke="--smoke" in sys.argv)))
