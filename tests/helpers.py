"""Plain functions the test modules share, imported as ``from helpers import ...``.

Fixtures live in ``conftest.py``; what is here is called, not requested:

* test signals: ``synthetic_stems`` (the tiny corpora's stems), ``band_tones`` (one tone in
  each band of ``band_split_model``), ``harmonic_audio`` (the Audio-MAE tests'), ``encode``
  (a file in any FFmpeg codec);
* stand-in models with a known answer: ``band_split_model`` (an FFT band splitter) and
  ``equal_split_model`` (every output is mix / 8);
* the tiny real model: ``write_tiny_workdir`` (a workdir as training leaves it, without
  training), ``tiny_mae_config``;
* the tools as users run them: ``run_tool``, ``START_UP_NOISE``, ``calibrate_args``.
"""

from __future__ import annotations

import itertools
import os
import pathlib
import subprocess
import sys
import types
from collections.abc import Sequence

import av
import flax
import jax
import jax.numpy as jnp
import numpy as np

from trackformer_jax import checkpoints
from trackformer_jax.inference import loading
from trackformer_jax.training import config_files

REPO = pathlib.Path(__file__).resolve().parents[1]
# The stand-in models' rate, and the tiny exported model's (configs/tiny.py:data).
RATE_HZ = 8000
# The tiny corpora's (conftest.py) rate and MUSDB track names.
TINY_RATE_HZ = 8000
# Two of MUSDB's 14 validation names, so the tiny corpus has a non-empty validation split.
TINY_MUSDB_TRAIN = (
  "Actions - One Minute Smile",
  "Leaf - Summerghost",
  "Tiny Artist - First Song",
  "Tiny Artist - Second Song",
)
TINY_MUSDB_TEST = ("Tiny Band - Held Out", "Tiny Band - Also Held Out")
# What the libraries print on a start or a workdir load unless command_line.quiet_startup
# silences them.
START_UP_NOISE = ("WARNING:absl", "oneDNN", "absl::InitializeLog", "libtpu", "Traceback")


def synthetic_stems(seed: int, frames: int, channels: int, rate_hz: int) -> np.ndarray:
  """Four distinct, never-silent harmonic stems ``float32 [4, channels, frames]``.

  vocals: a gliding 3-harmonic tone; bass: a low sawtooth-ish tone; drums: decaying noise
  bursts on a beat grid; other: a two-note chord. Amplitudes keep every sum below 1.
  """
  rng = np.random.default_rng(seed)
  t = np.arange(frames) / rate_hz
  f_vocal = rng.uniform(300, 600) * (1 + 0.05 * np.sin(2 * np.pi * rng.uniform(0.5, 2) * t))
  phase = 2 * np.pi * np.cumsum(f_vocal) / rate_hz
  vocals = sum(np.sin(k * phase) / k for k in (1, 2, 3))
  f_bass = rng.uniform(50, 110)
  bass = sum(np.sin(2 * np.pi * k * f_bass * t) / k for k in range(1, 6))
  beat = int(rate_hz * rng.uniform(0.2, 0.35))
  envelope = np.exp(-np.mod(np.arange(frames), beat) / (0.03 * rate_hz))
  drums = rng.standard_normal(frames) * envelope
  f_other = rng.uniform(200, 400)
  other = np.sin(2 * np.pi * f_other * t) + np.sin(2 * np.pi * f_other * 1.25 * t)
  stems = np.stack([vocals, bass, drums, other])
  stems /= np.abs(stems).max(axis=1, keepdims=True)
  stems *= rng.uniform(0.08, 0.2, size=(4, 1))
  pans = rng.uniform(0.6, 1.0, size=(4, channels))
  return (stems[:, None, :] * pans[:, :, None]).astype(np.float32)


def band_tones(seconds, rate_hz=RATE_HZ, num_bands=8, channels=1, seed=0):
  """``[num_bands, channels, T]``: one tone in the middle of each band of band_split_model."""
  rng = np.random.default_rng(seed)
  t = np.arange(round(seconds * rate_hz)) / rate_hz
  centres = (np.arange(num_bands) + 0.5) * (rate_hz / 2) / num_bands
  amplitudes = rng.uniform(0.03, 0.1, num_bands)
  tones = amplitudes[:, None] * np.sin(
    2 * np.pi * centres[:, None] * t + rng.uniform(0, 6, num_bands)[:, None]
  )
  gains = rng.uniform(0.5, 1.0, (num_bands, channels))
  return (tones[:, None, :] * gains[:, :, None]).astype(np.float32)


def harmonic_audio(key, batch: int, length: int = 2000) -> jax.Array:
  """Never-silent test audio `[batch, 1, length]`: random harmonic tones plus a little noise."""
  tone_key, noise_key = jax.random.split(key)
  frequencies = jax.random.uniform(tone_key, (batch, 1, 3), minval=0.01, maxval=0.2)
  t = jnp.arange(length)
  tones = jnp.sum(jnp.sin(2 * jnp.pi * frequencies[..., None] * t), axis=-2)
  return 0.1 * tones + 0.01 * jax.random.normal(noise_key, (batch, 1, length))


def encode(path, mixture, rate_hz, codec, *, container_options=None, bitrate=None):
  """Encodes ``mixture [C, T]`` (float, mono or stereo) with FFmpeg's ``codec``."""
  channels = mixture.shape[0]
  layout = "mono" if channels == 1 else "stereo"
  with av.open(str(path), "w", options=container_options or {}) as container:
    stream = container.add_stream(codec, rate=rate_hz)
    stream.layout = layout
    if bitrate:
      stream.bit_rate = bitrate
    formats = [f.name for f in stream.codec_context.codec.audio_formats]
    pts = 0
    for start in range(0, mixture.shape[1], 1000):
      block = np.ascontiguousarray(mixture[:, start : start + 1000], np.float32)
      if "fltp" in formats:
        frame = av.AudioFrame.from_ndarray(block, format="fltp", layout=layout)
      else:  # libopus takes interleaved 16-bit
        interleaved = (block.T * 32767).astype(np.int16).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(interleaved, format="s16", layout=layout)
      frame.sample_rate = rate_hz
      frame.pts = pts
      pts += block.shape[1]
      for packet in stream.encode(frame):
        container.mux(packet)
    for packet in stream.encode(None):
      container.mux(packet)


def band_split_model(
  sample_rate_hz=RATE_HZ, num_outputs=8, channels=1, shuffle_seed=None, calls=None
) -> loading.LoadedModel:
  """Output i of a segment = the segment's i-th band of equal-width FFT bins.

  With ``shuffle_seed`` each segment's outputs come in a fresh random order; ``calls``
  (a list) receives each batch's permutations.
  """
  rng = np.random.default_rng(shuffle_seed)

  def apply_fn(mix, want_masks=False):
    spectrum = np.fft.rfft(mix, axis=-1)  # [B, C, F]
    edges = np.linspace(0, spectrum.shape[-1], num_outputs + 1).round().astype(int)
    bands = []
    for lo, hi in itertools.pairwise(edges):
      masked = np.zeros_like(spectrum)
      masked[..., lo:hi] = spectrum[..., lo:hi]
      bands.append(np.fft.irfft(masked, n=mix.shape[-1], axis=-1))
    estimates = np.stack(bands, axis=1).astype(np.float32)  # [B, N, C, T]
    if shuffle_seed is not None:
      orders = [rng.permutation(num_outputs) for _ in range(mix.shape[0])]
      if calls is not None:
        calls.append(orders)
      estimates = np.stack([e[o] for e, o in zip(estimates, orders)])
    return estimates, None

  return loading.LoadedModel(
    name="bands",
    model_name="bands",
    sample_rate_hz=sample_rate_hz,
    channels=channels,
    num_outputs=num_outputs,
    apply_fn=apply_fn,
  )


def equal_split_model(sample_rate_hz=RATE_HZ, channels=1) -> loading.LoadedModel:
  """Every output is mix / 8: any assignment scores exactly the input (SI-SNRi 0 dB)."""

  def apply_fn(mix, want_masks=False):
    return np.repeat(mix[:, None] / 8, 8, axis=1).astype(np.float32), None

  return loading.LoadedModel(
    name="equal",
    model_name="equal",
    sample_rate_hz=sample_rate_hz,
    channels=channels,
    num_outputs=8,
    apply_fn=apply_fn,
  )


@flax.struct.dataclass
class SavedState:
  """What a checkpoint of the tiny model needs: its step and its params."""

  step: jax.Array
  params: dict


def write_tiny_workdir(
  path: pathlib.Path,
  tiny_config,
  saves: Sequence[tuple[int, float, dict[str, float]]],
  keep_checkpoints: int,
) -> None:
  """A new training workdir at ``path`` as training leaves it, without training.

  The model is the tiny Performer of configs/test.py on ``tiny_config("chorales")``, randomly
  initialised (key 3); each ``(step, scale, metrics)`` saves its params times ``scale``.
  """
  from configs import test as test_config  # the tiny model sizes

  config = tiny_config("chorales")
  config.model = test_config.get_config().model
  path.mkdir()
  _, variables = loading.init_variables(config, jax.random.key(3))
  checkpoints.write_config(path, config)
  manager = checkpoints.create_manager(path, keep_checkpoints=keep_checkpoints)
  for step, scale, metrics in saves:
    params = jax.tree.map(lambda x, s=scale: x * s, variables["params"])
    checkpoints.save(manager, SavedState(step=np.int32(step), params=params), step, metrics)
  manager.wait_until_finished()
  manager.close()


def tiny_mae_config(frontend: str = "stft", **mae_overrides):
  """``configs/tiny.py:mae`` (``:mae,learned`` for the learned front end), ``config.mae``
  fields overridden by keyword: the Audio-MAE of the model and pre-training tests."""
  config = config_files.load_config("tiny:mae,learned" if frontend == "learned" else "tiny:mae")
  for name, value in mae_overrides.items():
    setattr(config.mae, name, value)
  return config


def run_tool(*args, umask=None, cwd=REPO, timeout=300) -> subprocess.CompletedProcess:
  """``python -m <args>`` as a user runs it (CPU only, as every test)."""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  module = [] if args[0].startswith("-") else ["-m"]
  return subprocess.run(
    [sys.executable, *module, *map(str, args)],
    cwd=cwd,
    env=env,
    capture_output=True,
    text=True,
    timeout=timeout,
    umask=-1 if umask is None else umask,
  )


def calibrate_args(model, musdb_root, *extra) -> list[str]:
  """``calibrate``'s arguments for a quick run: 2 tracks of ``musdb:musdb_root``, one
  1-second excerpt each."""
  data = ["--data", f"musdb:{musdb_root}", "--tracks", "2", "--excerpts", "1"]
  return ["--model", str(model), *data, "--excerpt-seconds", "1", *extra]


def send_orphaned_read_reports(folder) -> list[BaseException]:
  """Sends ``sys.unraisablehook`` what the reads orbax leaves behind report (the closed event
  loop; a failed read naming ``folder``) and one report of something else; returns the three
  errors, in that order."""
  errors = [
    RuntimeError("Event loop is closed"),
    ValueError(f'OUT_OF_RANGE: Error reading "x" at local file "{folder}/"'),
    ValueError("a failure of something else"),
  ]
  for error in errors:
    sys.unraisablehook(types.SimpleNamespace(exc_value=error, object=None))
  return errors
