"""A damaged or foreign model folder through ``separate``: one line naming the folder and the
problem, before any work (no output folder is made), never a traceback.

Each case damages a copy of the tiny exported model (conftest's ``exported``).
"""

from __future__ import annotations

import json
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
from helpers import RATE_HZ, REPO

from trackformer_jax import audio, separate


def truncate_params(folder: pathlib.Path) -> str:
  files = [p for p in (folder / "params").rglob("*") if p.is_file()]
  biggest = max(files, key=lambda p: p.stat().st_size)
  biggest.write_bytes(biggest.read_bytes()[: biggest.stat().st_size // 2])
  return f"{(folder / 'params').resolve()}: the parameters are damaged or do not fit the config ("


def delete_manifest(folder: pathlib.Path) -> str:
  (folder / "params" / "manifest.ocdbt").unlink()
  return (
    f"{(folder / 'params').resolve()}: incomplete parameters checkpoint (no manifest.ocdbt); "
    "export the model again"
  )


def drop_hop(folder: pathlib.Path) -> str:
  config = json.loads((folder / "config.json").read_text())
  del config["model"]["hop"]
  (folder / "config.json").write_text(json.dumps(config))
  return (
    f"{folder}/config.json: model.hop is missing, and model 'performer' needs it (a folder "
    "from another version?)"
  )


def four_output_stem_map(folder: pathlib.Path) -> str:
  stems = ["vocals", "bass", "drums", "other"]
  (folder / "stem_map.json").write_text(json.dumps({"stems": stems, "output_to_stem": stems}))
  return (
    f"{folder}/stem_map.json: maps 4 outputs, but the model has 8; rerun calibrate on this model"
  )


DAMAGE = [truncate_params, delete_manifest, drop_hop, four_output_stem_map]


def damaged_copy(model, tmp_path, damage) -> tuple[pathlib.Path, pathlib.Path, str]:
  folder = tmp_path / "model"
  shutil.copytree(model, folder)
  expected = damage(folder)
  song = tmp_path / "song.wav"
  audio.write_audio(song, 0.3 * np.sin(np.arange(RATE_HZ) * 0.3)[None], RATE_HZ)
  return folder, song, expected


@pytest.mark.parametrize("damage", DAMAGE, ids=lambda d: d.__name__)
def test_a_damaged_model_folder_is_one_line(exported, tmp_path, capsys, damage):  # noqa: F811
  folder, song, expected = damaged_copy(exported, tmp_path, damage)
  status = separate.main([str(song), "--model", str(folder), "-o", str(tmp_path / "out")])
  assert status == 2
  lines = capsys.readouterr().err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(f"separate: {expected}"), lines
  assert not (tmp_path / "out").exists()


@pytest.mark.slow  # a subprocess per case, each importing jax
@pytest.mark.parametrize("damage", DAMAGE, ids=lambda d: d.__name__)
def test_a_damaged_model_folder_through_the_command(exported, tmp_path, damage):  # noqa: F811
  folder, song, expected = damaged_copy(exported, tmp_path, damage)
  result = subprocess.run(
    [sys.executable, "-m", "trackformer_jax.separate", str(song), "--model", str(folder)]
    + ["-o", str(tmp_path / "out"), "--no-progress"],
    capture_output=True,
    text=True,
    cwd=REPO,
    timeout=300,
  )
  assert result.returncode == 2, result.stderr
  assert "Traceback" not in result.stderr and "Error:" not in result.stderr, result.stderr
  assert result.stderr.strip().splitlines()[-1].startswith(f"separate: {expected}")
  assert not (tmp_path / "out").exists()
