"""data/reserved.py: music reserved for evaluation never enters a training corpus."""

import shutil

import pytest

from trackformer_jax.data import render, reserved, songs

TIMGM = "/usr/share/sounds/sf2/TimGM6mb.sf2"


def test_reserved_packages_by_name_prefix():
  assert reserved.is_reserved("fretsonfire-songs-muldjord") and reserved.is_reserved(
    "freedink-data"
  )
  assert reserved.is_reserved("minuet-data") and reserved.is_reserved("opl3-soundfont")
  assert not reserved.is_reserved("pingus-data") and not reserved.is_reserved(None)


@pytest.fixture
def reserved_copy(tmp_path):
  """A SoundFont file under a reserved SoundFont's name, owned by no package."""
  path = tmp_path / "GeneralUser GS v1.471.sf2"
  shutil.copyfile(TIMGM, path)
  return str(path)


def test_a_training_render_refuses_a_reserved_soundfont_by_name(reserved_copy, tmp_path):
  for only_split in (None, "train"):
    with pytest.raises(ValueError, match="reserved for evaluation") as caught:
      render.render_corpus(
        tmp_path / "out",
        tracks=1,
        seconds=1.0,
        soundfont=[TIMGM, reserved_copy],
        only_split=only_split,
        progress=False,
      )
    assert reserved_copy in str(caught.value) and TIMGM not in str(caught.value)
  assert not (tmp_path / "out").exists()  # refused before anything was written
  # A held-out render may use it: that is how music for scoring is made.
  reserved.refuse_reserved_soundfonts((reserved_copy,), "test")
  assert reserved.reserved_soundfonts((TIMGM,)) == {}


def test_a_soundfont_owned_by_a_reserved_package_is_refused_whatever_its_name(
  tmp_path, monkeypatch
):
  path = str(tmp_path / "bank.sf2")
  shutil.copyfile(TIMGM, path)
  monkeypatch.setattr(reserved, "packages_of", lambda paths: {path: "minuet-data"})
  assert reserved.reserved_soundfonts((path,)) == {path: "from minuet-data"}
  with pytest.raises(ValueError, match="bank.sf2 \\(from minuet-data\\)"):
    reserved.refuse_reserved_soundfonts((path,), "train")


def test_the_songs_command_names_the_reserved_drum_kit(reserved_copy, tmp_path, capsys):
  out = tmp_path / "songs"
  status = songs.main(["--out", str(out), "--tracks", "1", "--drum-kit", reserved_copy])
  assert status == 1
  error = capsys.readouterr().err
  assert error.startswith("error: ") and reserved_copy in error and "--only-split test" in error
  assert not out.exists()
