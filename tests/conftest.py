"""Shared test fixtures: tiny corpora in the real layouts, written once per session.

All are small (a few tracks of ~2 s at 8 kHz) so any test can use them freely:

* ``tiny_musdb``     Path to a MUSDB18-HQ layout: ``train/`` with 4 tracks, two of them
                     named like MUSDB's validation subset, and ``test/`` with 2 tracks;
                     stereo 8 kHz FLOAT wavs; each ``mixture.wav`` is exactly the sum of
                     its four synthetic harmonic stems. Spec: ``f"musdb:{tiny_musdb}"``.
* ``tiny_moisesdb``  Path to a MOISESDB layout (``moisesdb_v0.1/<uuid>/data.json`` and
                     ``<stem>/<uuid>.wav``) with 6 songs, mono 8 kHz, several stem kinds
                     (guitar, piano, percussion -> other); the last song has no drums.
* ``tiny_folder``    Path to a folder of 6 unlabeled files in nested folders: wav and
                     flac, mono and stereo, 8 kHz and 16 kHz.
* ``tiny_chorales``  Path to a 3-track, 2-second corpus rendered by the real renderer
                     (FluidSynth, 44.1 kHz stereo; about 5 s to build).
* ``tiny_config``    a function ``tiny_config(data_spec, **overrides) -> ConfigDict``:
                     ``configs/tiny.py:data`` (``default.py`` with 8 kHz mono, 0.5 s
                     segments, batch 2, 4 eval examples), overridden by keyword.
* ``compilation_cache`` (module scope) a persistent JAX compilation cache in a temporary
                     folder for the module's tests, caching every program; the module's
                     own JAX settings are restored after it. Use it with
                     ``pytestmark = pytest.mark.usefixtures("compilation_cache")``.

Plain functions, imported as ``from conftest import ...``: ``synthetic_stems`` (the tiny
corpora's stems), ``tiny_mae_config`` and ``harmonic_audio`` (the Audio-MAE tests').

Use the session paths read-only; copy them (``shutil.copytree``) before damaging files.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trackformer_jax import audio
from trackformer_jax.training import config_files

TINY_RATE_HZ = 8000
# Two of MUSDB's 14 validation names, so the tiny corpus has a non-empty validation split.
TINY_MUSDB_TRAIN = (
  "Actions - One Minute Smile",
  "Leaf - Summerghost",
  "Tiny Artist - First Song",
  "Tiny Artist - Second Song",
)
TINY_MUSDB_TEST = ("Tiny Band - Held Out", "Tiny Band - Also Held Out")


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


def tiny_mae_config(frontend: str = "stft", **mae_overrides):
  """``configs/tiny.py:mae`` (``:mae,learned`` for the learned front end), ``config.mae``
  fields overridden by keyword: the Audio-MAE of the model and pre-training tests."""
  config = config_files.load_config("tiny:mae,learned" if frontend == "learned" else "tiny:mae")
  for name, value in mae_overrides.items():
    setattr(config.mae, name, value)
  return config


def harmonic_audio(key, batch: int, length: int = 2000) -> jax.Array:
  """Never-silent test audio `[batch, 1, length]`: random harmonic tones plus a little noise."""
  tone_key, noise_key = jax.random.split(key)
  frequencies = jax.random.uniform(tone_key, (batch, 1, 3), minval=0.01, maxval=0.2)
  t = jnp.arange(length)
  tones = jnp.sum(jnp.sin(2 * jnp.pi * frequencies[..., None] * t), axis=-2)
  return 0.1 * tones + 0.01 * jax.random.normal(noise_key, (batch, 1, length))


@pytest.fixture(scope="session")
def tiny_musdb(tmp_path_factory) -> Path:
  root = tmp_path_factory.mktemp("tiny_musdb")
  names = [("train", n) for n in TINY_MUSDB_TRAIN] + [("test", n) for n in TINY_MUSDB_TEST]
  for i, (folder, name) in enumerate(names):
    frames = int(TINY_RATE_HZ * (1.6 + 0.2 * i))
    stems = synthetic_stems(i, frames, 2, TINY_RATE_HZ)
    track = root / folder / name
    for stem_name, stem in zip(("vocals", "bass", "drums", "other"), stems):
      audio.write_audio(track / f"{stem_name}.wav", stem, TINY_RATE_HZ, subtype="FLOAT")
    audio.write_audio(track / "mixture.wav", stems.sum(0), TINY_RATE_HZ, subtype="FLOAT")
  return root


@pytest.fixture(scope="session")
def tiny_moisesdb(tmp_path_factory) -> Path:
  root = tmp_path_factory.mktemp("tiny_moisesdb") / "moisesdb_v0.1"
  kinds = ("vocals", "bass", "drums", "guitar", "piano", "percussion")
  for song in range(6):
    track_id = str(uuid.UUID(int=song + 1))
    frames = int(TINY_RATE_HZ * (1.5 + 0.1 * song))
    parts = synthetic_stems(100 + song, frames, 1, TINY_RATE_HZ)
    present = kinds if song < 5 else tuple(k for k in kinds if k != "drums")
    # Stem signals: the 4 synthetic ones, the extra kinds as quieter copies of "other".
    signal = {"vocals": parts[0], "bass": parts[1], "drums": parts[2], "guitar": parts[3]}
    signal["piano"] = 0.5 * np.roll(parts[3], 100, axis=-1)
    signal["percussion"] = 0.5 * np.roll(parts[2], 300, axis=-1)
    stems_meta = []
    for kind in present:
      source_id = str(uuid.UUID(int=1000 * (song + 1) + kinds.index(kind)))
      audio.write_audio(
        root / track_id / kind / f"{source_id}.wav", signal[kind], TINY_RATE_HZ, "FLOAT"
      )
      stems_meta.append(
        {
          "stemName": kind,
          "id": source_id,
          "tracks": [{"id": source_id, "trackType": kind, "extension": "wav"}],
        }
      )
    meta = {"song": f"Song {song}", "artist": "Tiny Artist", "genre": "test", "stems": stems_meta}
    (root / track_id / "data.json").write_text(json.dumps(meta))
  return root.parent


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory) -> Path:
  root = tmp_path_factory.mktemp("tiny_folder")
  layout = [
    ("a/one.wav", 8000, 1),
    ("a/two.flac", 8000, 2),
    ("b/c/three.wav", 16000, 2),
    ("b/four.wav", 8000, 1),
    ("five.flac", 16000, 1),
    ("six.wav", 8000, 2),
  ]
  for i, (rel, rate, channels) in enumerate(layout):
    mixture = synthetic_stems(200 + i, int(rate * 1.5), channels, rate).sum(0)
    audio.write_audio(root / rel, mixture, rate, subtype="PCM_16")
  (root / "notes.txt").write_text("not audio; must be ignored")
  return root


@pytest.fixture(scope="session")
def tiny_chorales(tmp_path_factory) -> Path:
  from trackformer_jax.data import render

  root = tmp_path_factory.mktemp("tiny_chorales")
  render.render_corpus(root, tracks=3, seconds=2.0, seed=0, jobs=1, progress=False)
  return root


@pytest.fixture(scope="session")
def tiny_config():
  def make(data_spec: str, **overrides):
    config = config_files.load_config("tiny:data")
    config.data = data_spec
    for key, value in overrides.items():
      setattr(config, key, value)
    return config

  return make


@pytest.fixture(scope="module")
def compilation_cache(tmp_path_factory):
  # Modules that compile the same programs again and again (equal-shape runs, configs that
  # differ only in where their weights start) compile each distinct one once.
  saved = {
    name: getattr(jax.config, name)
    for name in ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")
  }
  jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.mktemp("jax_cache")))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  yield
  for name, value in saved.items():
    jax.config.update(name, value)
