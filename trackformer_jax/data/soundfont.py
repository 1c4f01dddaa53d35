"""SoundFonts made quick to load: an .sf3 is decompressed once into an .sf2 in the cache.

An .sf3 is a SoundFont 2 whose samples are Ogg Vorbis streams (MuseScore's format). FluidSynth
decodes every sample each time it loads one: 2.2 s for MuseScore_General_Lite.sf3 on this
project's 2-core machine, against 0.1-0.5 s for the .sf2 files, and the renderer starts one
FluidSynth per stem. Decoding once into 16-bit PCM gives an .sf2 that loads like any other
and renders the same audio: to the last bit where soundfile and FluidSynth use the same
libsndfile build; otherwise a few decoded samples round the other way (the rendered audio
then differed by under 2e-6 of full scale, tests/data/test_soundfont.py).

The .sf2 lives in ``$XDG_CACHE_HOME/trackformer_jax/soundfonts`` (``~/.cache/...``), named
after the .sf3 and keyed by its path, size and modification time; it is written to a
temporary name and renamed, so a crash never leaves half a SoundFont behind.
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
import tempfile
from pathlib import Path

import numpy as np
import soundfile

# SoundFont 2.04, section 7.10: one sample header record.
_SHDR = struct.Struct("<20sIIIIIBbHH")
_OGG_VORBIS = 0x10  # sampleType bit that marks a compressed sample (the sf3 extension)
_ZERO_TAIL = 46  # the spec's zero-valued data points after every sample


def _chunks(data: bytes, start: int, end: int, path: str):
  """(id, payload offset, size) of the RIFF chunks in ``data[start:end]``."""
  offset = start
  while offset + 8 <= end:
    chunk_id = data[offset : offset + 4]
    (size,) = struct.unpack("<I", data[offset + 4 : offset + 8])
    if offset + 8 + size > end:
      raise ValueError(f"{path}: chunk {chunk_id!r} runs past the end of its list")
    yield chunk_id, offset + 8, size
    offset += 8 + size
    # RIFF pads odd sizes to even; MuseScore's .sf3 files omit that byte, so skip it only
    # where the next four bytes are not already a chunk id.
    if size & 1 and not data[offset : offset + 4].isalnum():
      offset += 1


def _riff(chunk_id: bytes, payload: bytes) -> bytes:
  return chunk_id + struct.pack("<I", len(payload)) + payload + (b"\0" if len(payload) & 1 else b"")


def decompress_sf3(src: str | os.PathLike, dst: str | os.PathLike) -> int:
  """Writes ``src`` (.sf3) as a plain .sf2 at ``dst``; returns the number of samples.

  Every sub-chunk other than the sample data, its headers and the version is copied as is;
  each sample becomes 16-bit PCM followed by 46 zeros, and its loop points, which the .sf3
  stores relative to the sample, become absolute again.
  """
  src = str(src)
  data = Path(src).read_bytes()
  if data[:4] != b"RIFF" or data[8:12] != b"sfbk":
    raise ValueError(f"{src}: not a SoundFont (no RIFF 'sfbk' header)")
  lists = {}
  for chunk_id, offset, size in _chunks(data, 12, len(data), src):
    if chunk_id == b"LIST":
      lists[data[offset : offset + 4]] = [
        (sub_id, data[sub : sub + sub_size])
        for sub_id, sub, sub_size in _chunks(data, offset + 4, offset + size, src)
      ]
  missing = {b"INFO", b"sdta", b"pdta"} - lists.keys()
  if missing:
    raise ValueError(f"{src}: not a SoundFont (missing {sorted(m.decode() for m in missing)})")
  samples = dict(lists[b"sdta"]).get(b"smpl")
  headers = dict(lists[b"pdta"]).get(b"shdr")
  if samples is None or headers is None or len(headers) % _SHDR.size:
    raise ValueError(f"{src}: no sample data or a malformed sample header list")

  pcm, records, cursor = [], [], 0
  count = len(headers) // _SHDR.size - 1  # the last record is the terminal 'EOS'
  for i in range(count):
    name, start, end, loop_start, loop_end, rate, pitch, correction, link, kind = _SHDR.unpack_from(
      headers, i * _SHDR.size
    )
    if kind & _OGG_VORBIS:
      try:
        wave, _ = soundfile.read(io.BytesIO(samples[start:end]), dtype="int16", always_2d=True)
      except RuntimeError as e:  # soundfile's LibsndfileError
        raise ValueError(f"{src}: sample {i} is not a readable Ogg Vorbis stream ({e})") from e
      wave = wave[:, 0]
      kind &= ~_OGG_VORBIS
    else:
      # An uncompressed sample keeps the .sf2 convention: frame offsets, absolute loops.
      wave = np.frombuffer(samples[2 * start : 2 * end], dtype="<i2")
      loop_start, loop_end = loop_start - start, loop_end - start
    records.append(
      _SHDR.pack(
        name,
        cursor,
        cursor + len(wave),
        cursor + loop_start,
        cursor + loop_end,
        rate,
        pitch,
        correction,
        link,
        kind,
      )
    )
    pcm += [wave.astype("<i2"), np.zeros(_ZERO_TAIL, "<i2")]
    cursor += len(wave) + _ZERO_TAIL
  records.append(headers[-_SHDR.size :])

  info = [
    (chunk_id, struct.pack("<HH", 2, 4) if chunk_id == b"ifil" else payload)
    for chunk_id, payload in lists[b"INFO"]
  ]
  pdta = [
    (chunk_id, b"".join(records) if chunk_id == b"shdr" else payload)
    for chunk_id, payload in lists[b"pdta"]
  ]
  body = b"sfbk" + _riff(b"LIST", b"INFO" + b"".join(_riff(c, p) for c, p in info))
  body += _riff(b"LIST", b"sdta" + _riff(b"smpl", np.concatenate(pcm).tobytes()))
  body += _riff(b"LIST", b"pdta" + b"".join(_riff(c, p) for c, p in pdta))
  dst = Path(dst)
  dst.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(b"RIFF" + struct.pack("<I", len(body)) + body)
    os.replace(tmp, dst)
  except BaseException:
    Path(tmp).unlink(missing_ok=True)
    raise
  return count


def cache_root() -> Path:
  """``$XDG_CACHE_HOME/trackformer_jax`` (``~/.cache/...``): what the package keeps made once."""
  root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return Path(root) / "trackformer_jax"


def file_digest(path: str | os.PathLike, *extra, length: int) -> str:
  """A hex digest of ``path``'s real path, size and modification time (and ``extra``): what
  names a cached file made from it, so an edited file gets a new one."""
  stat = os.stat(path)
  key = ":".join(map(str, (os.path.realpath(path), stat.st_size, stat.st_mtime_ns, *extra)))
  return hashlib.sha1(key.encode()).hexdigest()[:length]


def cache_dir() -> Path:
  """Where decompressed SoundFonts are kept."""
  return cache_root() / "soundfonts"


def playable_soundfont(path: str | os.PathLike) -> str:
  """The file FluidSynth should load for ``path``: itself, or for an .sf3 its cached .sf2."""
  path = str(path)
  if not path.lower().endswith(".sf3"):
    return path
  cached = cache_dir() / f"{Path(path).stem}-{file_digest(path, length=12)}.sf2"
  if not cached.is_file():
    decompress_sf3(path, cached)
  return str(cached)
