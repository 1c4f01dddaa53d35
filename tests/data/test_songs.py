"""data/arrange.py, data/production.py, data/songs.py: styles, production, exact stem sums."""

import json

import numpy as np
import pytest

from trackformer_jax import audio
from trackformer_jax.data import arrange, multitrack, production, songs, sources

FLUID = "/usr/share/sounds/sf2/FluidR3_GM.sf2"


@pytest.mark.parametrize("style", arrange.STYLE_NAMES)
def test_every_style_composes_a_full_band(style):
  song = arrange.compose(np.random.default_rng(3), 20.0, style=style)
  assert song.style == style
  assert set(song.stems) == set(multitrack.STEM_NAMES)
  kick_or_snare = {arrange.KICK, arrange.SNARE, arrange.CLAP}
  drums = song.stems["drums"][0]
  assert drums.is_drum and any(n[0] in kick_or_snare for n in drums.notes)
  assert song.stems["bass"][0].notes, "no bass line"
  assert all(28 <= n[0] <= 55 for n in song.stems["bass"][0].notes)
  assert any(part.notes for part in song.stems["other"])
  for parts in song.stems.values():
    for part in parts:
      for pitch, start, end, velocity in part.notes:
        assert 0 <= pitch <= 127 and 1 <= velocity <= 127
        assert 0.0 <= start < 20.0 and end > start


def test_compose_is_a_function_of_the_generator():
  a = arrange.compose(np.random.default_rng(5), 10.0)
  b = arrange.compose(np.random.default_rng(5), 10.0)
  c = arrange.compose(np.random.default_rng(6), 10.0)
  assert a == b
  assert a != c


def test_styles_differ_in_meter_and_feel():
  meters = {(s.beats_per_bar, s.steps_per_beat) for s in arrange.STYLES}
  assert len(arrange.STYLES) >= 8
  assert {(4, 4), (4, 3), (3, 2), (2, 3)} <= meters  # straight, swung, 3/4, 6/8


def test_production_keeps_length_and_silence():
  rng = np.random.default_rng(0)
  t = np.arange(44100) / 44100
  tone = np.stack([np.sin(2 * np.pi * 220 * t)] * 2) * 0.3
  for kind in ("power", "pad", "strum"):
    effects, _ = production.part_effects(kind, rng)
    out = production.apply(effects, tone, 44100)
    assert out.shape == tone.shape and np.isfinite(out).all()
  effects, names = production.part_effects("power", rng)
  assert any(name.startswith("distortion") for name in names)
  silent = np.zeros((2, 44100))
  stems, gains = production.balance({"vocals": tone, "bass": silent}, 44100, rng)
  assert not np.any(stems["bass"]) and gains["bass"] == 0.0
  loudness = production.loudness_lufs(stems["vocals"], 44100)
  assert -24.0 <= loudness <= -17.0  # the reference -22 LUFS plus the vocals' offset


@pytest.mark.slow
def test_rendered_songs_sum_exactly_and_read_as_a_source(tmp_path):
  out = tmp_path / "songs"
  folders = songs.render_songs(out, tracks=2, seconds=3.0, seed=0, soundfont=FLUID, progress=False)
  assert len(folders) == 2
  for folder in folders:
    stems = np.stack([audio.read_audio(f"{folder}/{s}.wav") for s in multitrack.STEM_NAMES])
    mixture = audio.read_audio(f"{folder}/mixture.wav")
    np.testing.assert_array_equal(stems.sum(0), mixture)
    assert 0.0 < np.abs(mixture).max() <= 0.9 + 1e-4
    meta = json.loads((tmp_path / folder / "meta.json").read_text())
    assert meta["style"] in arrange.STYLE_NAMES and set(meta["parts"]) == set(stems_names())
  again = songs.render_songs(out, tracks=2, seconds=3.0, seed=0, soundfont=FLUID, progress=False)
  assert again == folders  # finished tracks are skipped, not rendered again
  source = sources.open_source(f"chorales:{out}", sample_rate_hz=8000, channels=1)
  assert len(source.tracks) == 2 and source.has_stems
  with pytest.raises(ValueError, match="rendered with"):
    songs.render_songs(out, tracks=2, seconds=4.0, seed=0, soundfont=FLUID, progress=False)


def stems_names():
  return multitrack.STEM_NAMES


KIT = songs.DEFAULT_DRUM_KITS[0]


@pytest.mark.slow
def test_drum_kits_play_only_acoustic_drum_parts(tmp_path):
  out = tmp_path / "songs"
  folders = songs.render_songs(
    out, tracks=6, seconds=2.0, seed=0, soundfont=FLUID, drum_kits=[KIT], progress=False
  )
  played_on_kit = []
  for folder in folders:
    meta = json.loads((tmp_path / folder / "meta.json").read_text())
    for stem, parts in meta["parts"].items():
      on_kit = [p for p in parts if p.get("soundfont") == "Black_Pearl_4_LV2.sf2"]
      assert stem == "drums" or not on_kit, (folder, stem)
      if on_kit:
        played_on_kit.append(folder)
        assert np.abs(audio.read_audio(f"{folder}/drums.wav")).max() > 0.01  # the kit sounds
        assert meta["style"] != "electronic"  # drum machines stay on the General MIDI fonts
    stems = np.stack([audio.read_audio(f"{folder}/{s}.wav") for s in multitrack.STEM_NAMES])
    np.testing.assert_array_equal(stems.sum(0), audio.read_audio(f"{folder}/mixture.wav"))
  assert 0 < len(played_on_kit) < len(folders)  # half the acoustic drum parts, drawn
  settings = json.loads((out / "render.json").read_text())
  assert settings["soundfonts"] == ["FluidR3_GM.sf2", "Black_Pearl_4_LV2.sf2"]
  with pytest.raises(ValueError, match="rendered with"):  # the same folder without the kit
    songs.render_songs(out, tracks=6, seconds=2.0, seed=0, soundfont=FLUID, progress=False)


def test_a_missing_drum_kit_is_named_with_its_package(tmp_path, capsys):
  missing = tmp_path / "Black_Pearl_4_LV2.sf2"
  status = songs.main(["--out", str(tmp_path / "out"), "--drum-kit", str(missing)])
  assert status == 1
  assert capsys.readouterr().err.strip() == (
    f"error: {missing}: SoundFont not found (Debian package avldrums.lv2-soundfont)"
  )


def test_missing_soundfont_is_named(tmp_path):
  with pytest.raises(FileNotFoundError, match="nowhere.sf2"):
    songs.render_songs(tmp_path, tracks=1, soundfont="/nowhere.sf2", progress=False)


@pytest.mark.slow
def test_bundled_reads_every_sub_corpus(tmp_path):
  from trackformer_jax.data import bundled

  counts = bundled.build(tmp_path, num_songs=2, num_chorales=1, seconds=2.0, progress=False)
  assert counts == {"songs": 2, "chorales": 1}
  source = sources.open_source(f"bundled:{tmp_path}", sample_rate_hz=8000, channels=1)
  kinds = sorted({t.track_id.split("/")[0] for t in source.tracks})
  assert kinds == ["chorales", "songs"] and len(source.tracks) == 3 and source.has_stems
  assert {t.split for t in source.tracks} <= {"train", "validation"}
  assert not bundled.is_complete(tmp_path)  # fewer tracks than the quickstart's
  with pytest.raises(sources.DataError, match="sub-corpora"):
    sources.open_source(f"bundled:{tmp_path / 'songs' / 'train'}", sample_rate_hz=8000, channels=1)
