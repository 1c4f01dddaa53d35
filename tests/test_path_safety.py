"""Paths from the command line and from model files never make a tool write outside its folder.

``separate`` names each output folder after the track: ``-o OUT`` gets ``OUT/<model>/<track>/``
and nothing else, whatever the track is called (``../mixture.wav``, ``..wav``,
``../../x.wav``). A stem map read from a model folder names output files, so its stem names
must be plain file names. ``export --overwrite`` replaces an earlier export, never another
folder.
"""

from __future__ import annotations

import json
import os
import pathlib

import ml_collections
import numpy as np
import pytest

from trackformer_jax import audio, separate
from trackformer_jax import export as export_lib
from trackformer_jax.inference import loading

RATE_HZ = 8000


def split_model() -> loading.LoadedModel:
  weights = np.array([0.25, 0.75], np.float32)
  return loading.LoadedModel(
    name="split",
    model_name="split",
    sample_rate_hz=RATE_HZ,
    channels=1,
    num_outputs=2,
    apply_fn=lambda mix, want_masks=False: (mix[:, None] * weights[None, :, None, None], None),
  )


def snapshot(folder: pathlib.Path) -> dict[str, bytes]:
  return {
    str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
  }


def test_no_track_name_sends_separate_outside_its_folder(tmp_path, monkeypatch, capsys):
  # tmp/work/song/mixture.wav, tmp/work/..wav, tmp/work/...wav, tmp/x.wav; run from
  # tmp/work/song/deeper with relative paths that climb.
  work = tmp_path / "work"
  tone = 0.1 * np.sin(np.arange(RATE_HZ // 2, dtype=np.float32) / 5)[None]
  for relative in ("song/mixture.wav", "..wav", "...wav", "../x.wav"):
    audio.write_audio(work / relative, tone, RATE_HZ)
  cwd = work / "song" / "deeper"
  cwd.mkdir()
  monkeypatch.chdir(cwd)
  out = tmp_path / "separated"
  # Earlier results that must survive: another model's, and another song of this model's.
  audio.write_audio(out / "other_model" / "song" / "output_0.wav", tone, RATE_HZ)
  audio.write_audio(out / "split" / "earlier" / "output_0.wav", tone, RATE_HZ)
  before = snapshot(tmp_path)
  monkeypatch.setattr(loading, "load_model", lambda *a, **k: split_model())
  tracks = ["../mixture.wav", "../../..wav", "../../...wav", "../../../x.wav"]
  code = separate.main([*tracks, "--model", "m", "-o", str(out), "--no-progress"])
  assert code == 0, capsys.readouterr().err
  after = snapshot(tmp_path)
  new = sorted(set(after) - set(before))
  expected_folders = ("song", "..wav", "...wav", "x")
  assert new == sorted(
    f"separated/split/{folder}/output_{i}.wav" for folder in expected_folders for i in range(2)
  )
  assert {name: after[name] for name in before} == before  # nothing else changed
  # No staging folder left behind either.
  assert sorted(p.name for p in (out / "split").iterdir()) == sorted(["earlier", *expected_folders])


def test_separate_writing_into_the_input_folder_leaves_the_inputs_alone(tmp_path, monkeypatch):
  inputs = tmp_path / "songs"
  tone = 0.1 * np.sin(np.arange(RATE_HZ // 2, dtype=np.float32) / 5)[None]
  audio.write_audio(inputs / "a.wav", tone, RATE_HZ)
  audio.write_audio(inputs / "b.wav", tone, RATE_HZ)
  before = snapshot(inputs)
  monkeypatch.setattr(loading, "load_model", lambda *a, **k: split_model())
  tracks = [str(inputs / "a.wav"), str(inputs / "b.wav")]
  assert separate.main([*tracks, "--model", "m", "-o", str(inputs), "--no-progress"]) == 0
  after = snapshot(inputs)
  assert {name: after[name] for name in before} == before
  assert sorted(set(after) - set(before)) == [
    f"split/{song}/output_{i}.wav" for song in ("a", "b") for i in range(2)
  ]


@pytest.mark.parametrize("stem", ["../../escaped", "/etc/passwd", "a/b", "..", ".", "", "x\\y"])
def test_a_stem_map_from_a_model_folder_cannot_name_a_path(tmp_path, stem):
  model_dir = tmp_path / "downloaded_model"
  model_dir.mkdir()
  stems = ["vocals", stem]
  (model_dir / export_lib.STEM_MAP_FILE).write_text(
    json.dumps({"stems": stems, "output_to_stem": ["vocals", stem]})
  )
  with pytest.raises(export_lib.ModelLoadError, match="not a plain file name"):
    export_lib.read_stem_map(model_dir)
  with pytest.raises(ValueError, match="not a plain file name"):
    export_lib.StemMap(output_to_stem=("vocals",), stems=tuple(stems))


def test_plain_stem_names_still_load(tmp_path):
  export_lib.save_stem_map(tmp_path, export_lib.StemMap(output_to_stem=("vocals", "bass")))
  assert export_lib.read_stem_map(tmp_path).stems == export_lib.STEM_NAMES


def test_export_overwrite_replaces_only_an_earlier_export(tmp_path, monkeypatch):
  # The refusal comes before anything is built, so a placeholder model will do.
  config = ml_collections.ConfigDict({"model": {"name": "x"}})
  variables = {"params": {"w": np.zeros(2, np.float32)}}
  workdir = tmp_path / "runs" / "quick"
  (workdir / "checkpoints").mkdir(parents=True)
  (workdir / "config.json").write_text("{}")
  before = snapshot(tmp_path)
  monkeypatch.chdir(workdir)
  for out in (workdir, tmp_path / "runs", pathlib.Path("."), pathlib.Path("..")):
    with pytest.raises(FileExistsError, match="is not an exported model; not replacing it"):
      export_lib.export_model(config, variables, out, overwrite=True)
  assert snapshot(tmp_path) == before
  assert sorted(os.listdir(tmp_path)) == ["runs"]  # no staging folder left anywhere
