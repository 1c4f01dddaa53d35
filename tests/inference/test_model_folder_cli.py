"""A damaged or foreign model folder through ``separate``: one line naming the folder and the
problem, before any work (no output folder is made), never a traceback.

Each case damages a copy of the tiny exported model (conftest's ``exported``).
"""

from __future__ import annotations

import json
import logging
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
from helpers import RATE_HZ, REPO, send_orphaned_read_reports

from trackformer_jax import audio, separate
from trackformer_jax.inference import loading


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


def test_a_failed_restore_silences_the_reads_it_left_and_nothing_else(
  exported,  # noqa: F811
  tmp_path,
  monkeypatch,
):
  # The reads orbax leaves running report from other threads and at shutdown; each names the
  # folder, but for the closed event loop. What reaches the hook it replaced is the rest.
  reported = []
  monkeypatch.setattr(sys, "unraisablehook", reported.append)
  asyncio_log = logging.getLogger("asyncio")
  monkeypatch.setattr(asyncio_log, "filters", [])  # put back afterwards
  folder, _, _ = damaged_copy(exported, tmp_path, truncate_params)
  with pytest.raises(loading.ModelLoadError):
    loading.load_model(folder)
  params = str((folder / "params").resolve())
  errors = send_orphaned_read_reports(params)
  # (Reads of the earlier tests' damaged folders may report here too, when collected.)
  assert [report.exc_value for report in reported if report.exc_value in errors] == errors[2:]
  record = logging.LogRecord(
    "asyncio", logging.ERROR, "", 0, f"never retrieved: {params}", (), None
  )
  other = logging.LogRecord("asyncio", logging.ERROR, "", 0, "never retrieved: other", (), None)
  assert not asyncio_log.filter(record) and asyncio_log.filter(other)


def test_a_restore_that_succeeds_leaves_the_hooks_as_they_were(exported, monkeypatch):  # noqa: F811
  monkeypatch.setattr(sys, "unraisablehook", hook := lambda report: None)
  filters = list(logging.getLogger("asyncio").filters)  # earlier failed loads keep theirs
  loading.load_model(exported)
  assert sys.unraisablehook is hook and logging.getLogger("asyncio").filters == filters
