"""Shared test fixtures: tiny corpora in the real layouts, written once per session, the
tiny exported model and stand-in models. The plain functions the tests share are in
``helpers.py``.

The corpora are small (a few tracks of ~2 s at 8 kHz) so any test can use them freely:

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
* ``exported``       (module scope) Path to an exported tiny model (the Performer of
                     ``configs/test.py``, randomly initialised; 8 kHz mono), exported from
                     the workdir beside it, ``exported.parent / "workdir"``.
* ``stand_in_models`` ``load_model`` gives ``helpers.band_split_model`` (with a tiny
                     config), ``random_init_model`` (the control) ``equal_split_model``.

Use the session paths read-only; copy them (``shutil.copytree``) before damaging files.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import jax
import numpy as np
import pytest
from helpers import (
  TINY_MUSDB_TEST,
  TINY_MUSDB_TRAIN,
  TINY_RATE_HZ,
  band_split_model,
  equal_split_model,
  synthetic_stems,
  write_tiny_workdir,
)

from trackformer_jax import audio
from trackformer_jax.inference import exporting, loading
from trackformer_jax.training import config_files


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


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_config):
  """An exported tiny model (8 kHz mono), through a workdir as training leaves it."""
  root = tmp_path_factory.mktemp("model")
  write_tiny_workdir(root / "workdir", tiny_config, [(1, 1.0, {"score": 1.0})], keep_checkpoints=2)
  out = root / "tiny"
  exporting.export_workdir(root / "workdir", out)
  return out


@pytest.fixture
def stand_in_models(monkeypatch, tiny_config):
  """load_model gives the band splitter (with a tiny config); the control splits equally."""

  def load_model(path, **kwargs):
    model = band_split_model()
    model.config = tiny_config("musdb:unused")
    model.name = str(path)
    return model

  monkeypatch.setattr(loading, "load_model", load_model)
  monkeypatch.setattr(loading, "random_init_model", lambda config, **k: equal_split_model())
