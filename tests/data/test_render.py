"""data/render.py: layout, exact stem sums, no clipping, determinism, resume, the drum part."""

import json
import os
from pathlib import Path

import numpy as np
import pretty_midi
import pytest

from trackformer_jax import audio
from trackformer_jax.data import render, sources

FILES = {"mixture.wav", "vocals.wav", "bass.wav", "drums.wav", "other.wav", "meta.json"}


def _tracks(root):
  return sorted(p for split in ("train", "test") for p in (root / split).glob("*") if p.is_dir())


@pytest.mark.slow
def test_layout_exact_sum_and_no_clipping(tiny_chorales):
  tracks = _tracks(tiny_chorales)
  assert len(tracks) == 3
  for track in tracks:
    assert {p.name for p in track.iterdir()} == FILES  # no temporary files left behind
    info = audio.audio_info(track / "mixture.wav")
    assert (info.sample_rate_hz, info.channels, info.frames) == (44100, 2, 2 * 44100)
    stems = np.stack([audio.read_audio(track / f"{s}.wav") for s in render.STEM_NAMES])
    mixture = audio.read_audio(track / "mixture.wav")
    # Exactly, not approximately: the mixture is the integer sum of the 16-bit stems.
    np.testing.assert_array_equal(stems.sum(0), mixture)
    assert np.abs(mixture).max() <= 0.9 + 1e-4
    assert np.abs(stems).max() < 1.0
    for name, stem in zip(render.STEM_NAMES, stems):
      assert _rms_db(stem) > -60, (track.name, name)


def _rms_db(x):
  return 10 * np.log10(np.mean(np.square(x, dtype=np.float64)) + 1e-20)


@pytest.mark.slow
def test_split_by_score_and_readable_as_a_source(tiny_chorales):
  for track in _tracks(tiny_chorales):
    song = track.name.split("-", 1)[1]
    assert track.parent.name == render.split_of_song(song)
  source = sources.open_source(f"chorales:{tiny_chorales}", sample_rate_hz=8000, channels=1)
  assert len(source.tracks) == 3 and source.has_stems and not source.skipped
  assert all(t.split == ("validation" if t.track_id.startswith("test/") else "train")
             for t in source.tracks)  # fmt: skip


@pytest.mark.slow
def test_deterministic_per_seed_and_resumable(tiny_chorales, tmp_path):
  again = render.render_corpus(tmp_path / "a", tracks=1, seconds=2.0, seed=0, progress=False)
  other = render.render_corpus(tmp_path / "b", tracks=1, seconds=2.0, seed=1, progress=False)
  first = next(p for p in _tracks(tiny_chorales) if p.name.startswith("0000-"))
  for name in FILES - {"meta.json"}:
    assert (first / name).read_bytes() == (tmp_path / again[0] / name).read_bytes(), name
  assert (first / "mixture.wav").read_bytes() != (tmp_path / other[0] / "mixture.wav").read_bytes()
  # Resume: finished tracks are skipped untouched; an unfinished one (no meta.json) redone.
  stamp = os.stat(tmp_path / again[0] / "mixture.wav").st_mtime_ns
  assert render.render_corpus(tmp_path / "a", tracks=1, seconds=2.0, progress=False) == again
  assert os.stat(tmp_path / again[0] / "mixture.wav").st_mtime_ns == stamp
  os.remove(os.path.join(again[0], "meta.json"))
  render.render_corpus(tmp_path / "a", tracks=1, seconds=2.0, progress=False)
  assert os.path.exists(os.path.join(again[0], "meta.json"))


@pytest.mark.slow
def test_only_split_renders_held_out_songs_alone(tmp_path):
  scores = render.score_paths()[:3]
  splits = [render.split_of_song(render.score_name(p)) for p in scores]
  assert "test" in splits and "train" in splits  # the first scores cover both splits
  folders = render.render_corpus(
    tmp_path, tracks=3, seconds=1.0, seed=3, progress=False, only_split="test"
  )
  expected = [f"{i:04d}-{render.score_name(p)}" for i, p in enumerate(scores)
              if splits[i] == "test"]  # fmt: skip
  assert [os.path.basename(f) for f in folders] == expected
  assert not (tmp_path / "train").exists()
  assert [p.name for p in _tracks(tmp_path)] == expected
  with pytest.raises(ValueError, match="only_split"):
    render.render_corpus(tmp_path, tracks=1, only_split="validation", progress=False)


@pytest.mark.slow
def test_several_soundfonts_are_drawn_per_stem(tmp_path):
  fonts = list(render.DEFAULT_SOUNDFONTS)  # FluidR3, MuseScore General Lite (.sf3), sf_GMbank
  folders = render.render_corpus(tmp_path, tracks=3, seconds=1.0, soundfont=fonts, progress=False)
  drawn = [json.loads((Path(f) / "meta.json").read_text())["soundfonts"] for f in folders]
  assert all(set(d) == set(render.STEM_NAMES) for d in drawn)
  used = {font for d in drawn for font in d.values()}
  assert used == {os.path.basename(f) for f in fonts}  # seed 0's 12 draws use all three
  # One font: every stem uses it, and the draws of everything else are unchanged.
  one = render.render_corpus(
    tmp_path / "one", tracks=1, seconds=1.0, soundfont=fonts[0], progress=False
  )
  meta = json.loads((Path(one[0]) / "meta.json").read_text())
  assert set(meta["soundfonts"].values()) == {os.path.basename(fonts[0])}
  first = json.loads((Path(folders[0]) / "meta.json").read_text())
  assert {k: first[k] for k in ("programs", "gains_db", "quarter_bpm")} == {
    k: meta[k] for k in ("programs", "gains_db", "quarter_bpm")
  }


@pytest.mark.parametrize("beats_per_bar", [2, 3, 4])
def test_drum_part_follows_meter_and_tempo(beats_per_bar):
  rng = np.random.default_rng(0)
  kit = render._drum_instrument(
    pretty_midi, rng=rng, beats_per_bar=beats_per_bar, beat_seconds=0.5, duration_s=12.0
  )
  assert kit.is_drum
  kicks = sorted(n.start for n in kit.notes if n.pitch == render._KICK)
  bar = beats_per_bar * 0.5
  # A kick opens every bar (fill bars included), and all hits stay inside the track.
  downbeats = [k for k in kicks if abs(k / bar - round(k / bar)) < 1e-9]
  assert len({round(k / bar) for k in downbeats}) == int(np.ceil(12.0 / bar))
  assert max(n.start for n in kit.notes) < 12.0


def test_score_list_starts_with_bach_chorales():
  paths = render.score_paths()
  assert len(paths) > 1000
  assert render.score_name(paths[0]).startswith("bach-")
  assert any("monteverdi" in p for p in paths) and any("palestrina" in p for p in paths)
  assert render.split_of_song("bach-bwv1.6") == render.split_of_song("bach-bwv1.6")


def test_a_corpus_folder_refuses_tracks_rendered_with_other_settings(tmp_path):
  fluid = render.DEFAULT_SOUNDFONTS[0]
  render.render_corpus(tmp_path, tracks=2, seconds=0.5, soundfont=fluid, progress=False)
  settings = json.loads((tmp_path / "render.json").read_text())
  assert settings == {"seed": 0, "seconds": 0.5, "soundfonts": [os.path.basename(fluid)]}
  for other in (
    dict(soundfont=list(render.DEFAULT_SOUNDFONTS)),
    dict(soundfont=fluid, seed=1),
    dict(soundfont=fluid, seconds=1.0),
  ):
    with pytest.raises(ValueError, match="holds 2 tracks rendered with"):
      render.render_corpus(tmp_path, **{"tracks": 3, "seconds": 0.5, **other}, progress=False)
  assert len(_tracks(tmp_path)) == 2  # nothing was added
  # A folder from before render.json is judged by its tracks: one SoundFont throughout
  # cannot grow into a three-SoundFont corpus.
  (tmp_path / "render.json").unlink()
  with pytest.raises(ValueError, match="MuseScore_General_Lite"):
    render.render_corpus(
      tmp_path, tracks=3, seconds=0.5, soundfont=list(render.DEFAULT_SOUNDFONTS), progress=False
    )
  render.render_corpus(tmp_path, tracks=3, seconds=0.5, soundfont=fluid, progress=False)
  assert len(_tracks(tmp_path)) == 3 and (tmp_path / "render.json").is_file()


def test_cli_reports_a_missing_soundfont(tmp_path, capsys):
  code = render.main(["--out", str(tmp_path), "--tracks", "1", "--soundfont", "/no/such.sf2"])
  assert code == 1
  assert "/no/such.sf2: SoundFont not found" in capsys.readouterr().err


@pytest.mark.slow
def test_unfinished_track_is_skipped_and_named(tiny_chorales, tmp_path):
  import shutil

  root = tmp_path / "c"
  shutil.copytree(tiny_chorales, root)
  unfinished = _tracks(root)[0]
  (unfinished / "meta.json").unlink()
  source = sources.open_source(f"chorales:{root}", sample_rate_hz=8000, channels=1)
  assert len(source.tracks) == 2 and len(source.skipped) == 1
  assert f"{unfinished}: unfinished render" in source.skipped[0][1]
