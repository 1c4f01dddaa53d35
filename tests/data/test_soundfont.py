"""data.soundfont: an .sf3 decompressed into an .sf2 that renders the same audio."""

import io
import os
import struct
import subprocess

import numpy as np
import pretty_midi
import pytest
import soundfile

from trackformer_jax.data import render, soundfont

_SHDR = struct.Struct("<20sIIIIIBbHH")


def _riff(chunk_id, payload, pad=True):
  odd = len(payload) & 1
  return chunk_id + struct.pack("<I", len(payload)) + payload + (b"\0" if odd and pad else b"")


def _ogg(wave):
  buffer = io.BytesIO()
  soundfile.write(buffer, wave, 44100, format="OGG", subtype="VORBIS")
  return buffer.getvalue()


def _chunks(data, start, end):
  return {c: data[o : o + s] for c, o, s in soundfont._chunks(data, start, end, "test")}


def _lists(data):
  return {
    data[o : o + 4]: _chunks(data, o + 4, o + s)
    for c, o, s in soundfont._chunks(data, 12, len(data), "test")
    if c == b"LIST"
  }


def _tiny_sf3(path, waves, loops):
  """An .sf3 in MuseScore's layout: Ogg samples, relative loops, no pad after odd lists."""
  oggs = [_ogg(w) for w in waves]
  headers, offset = b"", 0
  for i, (ogg, (loop_start, loop_end)) in enumerate(zip(oggs, loops)):
    name = f"tone{i}".encode().ljust(20, b"\0")
    headers += _SHDR.pack(
      name, offset, offset + len(ogg), loop_start, loop_end, 44100, 60, 0, 0, 0x11
    )
    offset += len(ogg)
  headers += _SHDR.pack(b"EOS".ljust(20, b"\0"), 0, 0, 0, 0, 0, 0, 0, 0, 0)
  smpl = b"".join(oggs) + (b"" if offset & 1 else b"x")  # an odd size, as in MuseScore's files
  info = _riff(b"ifil", struct.pack("<HH", 3, 1)) + _riff(b"INAM", b"tiny\0\0")
  pdta = b"".join(_riff(c, bytes(range(10)) * 3) for c in (b"phdr", b"pbag", b"igen"))
  pdta += _riff(b"shdr", headers)
  body = b"sfbk" + _riff(b"LIST", b"INFO" + info)
  body += _riff(b"LIST", b"sdta" + _riff(b"smpl", smpl, pad=False), pad=False)
  body += _riff(b"LIST", b"pdta" + pdta)
  path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
  return oggs, pdta


def test_decompress_sf3_writes_pcm_samples_with_absolute_loops(tmp_path):
  rng = np.random.default_rng(0)
  waves = [0.3 * np.sin(np.arange(n) * f) + 0.01 * rng.standard_normal(n) for n, f in
           ((3001, 0.05), (4410, 0.11))]  # fmt: skip
  loops = [(100, 2900), (8, 4000)]
  oggs, _ = _tiny_sf3(tmp_path / "tiny.sf3", waves, loops)
  assert soundfont.decompress_sf3(tmp_path / "tiny.sf3", tmp_path / "tiny.sf2") == 2

  out = (tmp_path / "tiny.sf2").read_bytes()
  assert out[:4] == b"RIFF" and out[8:12] == b"sfbk"
  assert struct.unpack("<I", out[4:8])[0] == len(out) - 8
  lists = _lists(out)
  assert struct.unpack("<HH", lists[b"INFO"][b"ifil"]) == (2, 4)
  assert lists[b"INFO"][b"INAM"] == b"tiny\0\0"
  for chunk_id in (b"phdr", b"pbag", b"igen"):  # everything else is copied as is
    assert lists[b"pdta"][chunk_id] == bytes(range(10)) * 3
  pcm = np.frombuffer(lists[b"sdta"][b"smpl"], "<i2")
  headers = lists[b"pdta"][b"shdr"]
  assert len(headers) == 3 * _SHDR.size
  for i, (ogg, (loop_start, loop_end)) in enumerate(zip(oggs, loops)):
    name, start, end, ls, le, rate, pitch, _, _, kind = _SHDR.unpack_from(headers, i * _SHDR.size)
    expected, _ = soundfile.read(io.BytesIO(ogg), dtype="int16")
    np.testing.assert_array_equal(pcm[start:end], expected)
    assert not pcm[end : end + 46].any()  # the spec's 46 zeros after every sample
    assert (ls, le) == (start + loop_start, start + loop_end)
    assert kind == 1 and rate == 44100 and pitch == 60 and name.startswith(f"tone{i}".encode())
  assert headers[-_SHDR.size :].startswith(b"EOS")


def test_decompress_sf3_names_the_file_when_it_is_not_a_soundfont(tmp_path):
  (tmp_path / "bad.sf3").write_bytes(b"RIFF\0\0\0\0WAVEfmt ")
  with pytest.raises(ValueError, match="bad.sf3: not a SoundFont"):
    soundfont.decompress_sf3(tmp_path / "bad.sf3", tmp_path / "bad.sf2")
  _tiny_sf3(tmp_path / "broken.sf3", [np.zeros(500)], [(0, 10)])
  data = bytearray((tmp_path / "broken.sf3").read_bytes())
  at = data.index(b"OggS")
  data[at : at + 200] = bytes(200)  # the sample's Ogg stream, wiped
  (tmp_path / "broken.sf3").write_bytes(bytes(data))
  with pytest.raises(ValueError, match="broken.sf3: sample 0 is not a readable Ogg Vorbis"):
    soundfont.decompress_sf3(tmp_path / "broken.sf3", tmp_path / "broken.sf2")
  assert not list(tmp_path.glob("*broken.sf2*"))  # nothing half-written is left


def test_playable_soundfont_decompresses_an_sf3_once_into_the_cache(tmp_path, monkeypatch):
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
  assert soundfont.playable_soundfont("/any/font.sf2") == "/any/font.sf2"
  _tiny_sf3(tmp_path / "tiny.sf3", [np.zeros(300)], [(0, 10)])
  first = soundfont.playable_soundfont(tmp_path / "tiny.sf3")
  assert first.startswith(str(tmp_path / "cache" / "trackformer_jax" / "soundfonts" / "tiny-"))
  stamp = os.stat(first).st_mtime_ns
  assert soundfont.playable_soundfont(tmp_path / "tiny.sf3") == first
  assert os.stat(first).st_mtime_ns == stamp  # not decompressed again
  # A changed .sf3 gets a new copy.
  _tiny_sf3(tmp_path / "tiny.sf3", [np.zeros(400)], [(0, 10)])
  os.utime(tmp_path / "tiny.sf3", ns=(stamp + 10**9, stamp + 10**9))
  assert soundfont.playable_soundfont(tmp_path / "tiny.sf3") != first


def _fluidsynth(font, mid, wav):
  command = ["fluidsynth", "-ni", "-q", "-r", "44100", "-O", "float", "-T", "wav", "-F", wav]
  subprocess.run(command + [font, mid], check=True, capture_output=True)
  return soundfile.read(wav)[0]


@pytest.mark.slow
def test_the_decompressed_musescore_soundfont_renders_the_same_audio(tmp_path, monkeypatch):
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
  sf3 = next(f for f in render.DEFAULT_SOUNDFONTS if f.endswith(".sf3"))
  sf2 = soundfont.playable_soundfont(sf3)
  midi = pretty_midi.PrettyMIDI()
  for program, is_drum, pitch in ((40, False, 60), (33, False, 36), (0, True, 38)):
    instrument = pretty_midi.Instrument(program=program, is_drum=is_drum)
    instrument.notes += [
      pretty_midi.Note(90, pitch + k % 5, 0.3 * k, 0.3 * k + 0.4) for k in range(8)
    ]
    midi.instruments.append(instrument)
  midi.write(str(tmp_path / "t.mid"))
  original = _fluidsynth(sf3, str(tmp_path / "t.mid"), str(tmp_path / "a.wav"))
  decompressed = _fluidsynth(sf2, str(tmp_path / "t.mid"), str(tmp_path / "b.wav"))
  assert original.shape == decompressed.shape and np.abs(original).max() > 0.01
  # FluidSynth and soundfile may link different libsndfile builds, which round a few
  # decoded samples the other way: at most a few 16-bit steps apart, never more.
  assert np.abs(original - decompressed).max() < 1e-4
