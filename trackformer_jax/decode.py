"""Decoding (and MP3 encoding) through FFmpeg's libraries, by PyAV, whose wheels bundle them.

``audio`` reads WAV, FLAC, AIFF and Ogg with soundfile (faster, exact) and comes here for the
rest: MP3 of every kind (libsndfile takes an MP3's length from the header's estimate, which
is wrong without a Xing/Info header), AAC/M4A, Opus, ALAC, WMA, and whatever soundfile cannot
open. Lengths are what decodes, never a header's estimate: :func:`probe` decodes the whole
file once (cached while the file is unchanged) and compares the result with a length the
container states exactly, so a cut-off download is found and named, not separated silently.
Arrays are ``float32 [channels, time]`` at the file's own rate.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import threading
from collections.abc import Iterator

import numpy as np

# Containers whose stated length is exact (an index or a sample count, not a bitrate
# estimate): a decode that falls short of it is a truncated file. ``mp3`` only with a
# Xing/Info/VBRI frame count; Ogg is checked by its end-of-stream flag instead.
_EXACT_LENGTH_CONTAINERS = ("mov", "mp4", "matroska", "webm", "flac", "wav", "aiff", "asf", "caf")

# Shortfalls below this are rounding of the container's time base or codec padding.
_TRUNCATION_TOLERANCE_SECONDS = 0.25

# Decoded frames kept behind a cursor's newest read, so that overlapping reads (resampling
# context before a segment) are served without decoding from the start again.
_CURSOR_HISTORY_FRAMES = 1 << 17

_PROBE_CACHE_SIZE = 1024
_CURSOR_CACHE_SIZE = 4


class DecodeError(Exception):
  """Why FFmpeg cannot read a file (the message does not repeat the path)."""


@dataclasses.dataclass(frozen=True)
class Decoded:
  """What a whole decode found: the file's own rate, channels and decodable length.

  ``problem`` is None for a whole file, else a sentence saying what is missing (a truncated
  file decodes to what is there).
  """

  sample_rate_hz: int
  channels: int
  frames: int
  container: str
  codec: str
  problem: str | None = None


def _av():
  import av
  import av.logging

  # FFmpeg's own log lines (e.g. "Xing stream size off by more than 1%") would go to
  # stderr between our messages; what matters is reported through Decoded.problem.
  av.logging.set_level(av.logging.PANIC)
  return av


def as_float(frame) -> np.ndarray:
  """An ``av.AudioFrame`` in any sample format -> ``float32 [channels, samples]``."""
  array = frame.to_ndarray()
  channels = len(frame.layout.channels)
  if not frame.format.is_planar:
    array = array.reshape(-1, channels).T
  kind = frame.format.name.rstrip("p")
  if kind in ("flt", "dbl"):
    return array.astype(np.float32, copy=False)
  if kind == "u8":
    return ((array.astype(np.float32) - 128.0) / 128.0).astype(np.float32)
  scale = {"s16": 2.0**15, "s32": 2.0**31, "s64": 2.0**63}.get(kind)
  if scale is None:
    raise DecodeError(f"unsupported decoded sample format {frame.format.name}")
  return (array.astype(np.float64) / scale).astype(np.float32)


def _open(path: str):
  av = _av()
  try:
    container = av.open(path)
  except (av.error.FFmpegError, OSError, UnicodeDecodeError) as e:
    raise DecodeError(_reason(e)) from None
  if not container.streams.audio:
    container.close()
    raise DecodeError("no audio stream")
  return container, container.streams.audio[0]


def _reason(error: Exception) -> str:
  # PyAV's messages end with ": '<path>'"; the caller's message already starts with it.
  text = getattr(error, "strerror", None) or str(error)
  return str(text).split(": '")[0]


def _decode(path: str) -> Iterator[tuple[np.ndarray, int]]:
  """Yields the file's audio as ``(block [C, n], sample rate)``; a damaged tail ends it early.

  After the last block, the generator's return value (``StopIteration.value``) is the
  reason it stopped early, or None.
  """
  # Bound now: when a generator left open is closed at interpreter exit, ``av.error`` may be
  # gone already.
  ffmpeg_error = _av().error.FFmpegError
  container, stream = _open(path)
  rate = channels = None
  with container:
    try:
      for packet in container.demux(stream):
        for frame in packet.decode():
          block = as_float(frame)
          if rate is None:
            rate, channels = frame.sample_rate, block.shape[0]
          elif (frame.sample_rate, block.shape[0]) != (rate, channels):
            raise DecodeError(
              f"the stream changes from {rate} Hz, {channels} channels to "
              f"{frame.sample_rate} Hz, {block.shape[0]} channels"
            )
          yield block, rate
    except ffmpeg_error as e:
      return f"decoding stopped early ({_reason(e)})"
  return None


def _stated_frames(path: str, container, stream, rate: int) -> int | None:
  """The length the container states exactly, in frames, or None where it only estimates."""
  name = container.format.name
  if name == "mp3":
    if not _has_mp3_frame_count(path):
      return None
  elif not any(part in _EXACT_LENGTH_CONTAINERS for part in name.split(",")):
    return None
  if stream.duration is not None and stream.time_base is not None:
    return round(float(stream.duration * stream.time_base) * rate)
  if container.duration is not None:
    return round(container.duration / 1_000_000 * rate)
  return None


def stated_frames(path: str | os.PathLike) -> int | None:
  """The length the container states exactly (see _EXACT_LENGTH_CONTAINERS), without
  decoding; None where it states none or only estimates it, or FFmpeg cannot open it."""
  try:
    container, stream = _open(str(path))
  except DecodeError:
    return None
  with container:
    rate = stream.codec_context.sample_rate
    return _stated_frames(str(path), container, stream, rate) if rate else None


def _has_mp3_frame_count(path: str) -> bool:
  """Whether the first MPEG frame carries a Xing/Info/VBRI header (an exact frame count)."""
  with open(path, "rb") as f:
    head = f.read(10)
    offset = 0
    if head[:3] == b"ID3" and len(head) == 10:  # ID3v2: a syncsafe size in bytes 6-9
      offset = 10 + sum((b & 0x7F) << (7 * (3 - i)) for i, b in enumerate(head[6:10]))
    f.seek(offset)
    first_frame = f.read(4096)
  # The tag sits 13-36 bytes into the first frame (after the side information).
  return any(tag in first_frame[:200] for tag in (b"Xing", b"Info", b"VBRI"))


def ogg_ends_cleanly(path: str | os.PathLike) -> bool:
  """Whether the last Ogg page carries the end-of-stream flag (a cut-off file's does not)."""
  size = os.path.getsize(path)
  with open(path, "rb") as f:
    f.seek(max(0, size - 65536))  # an Ogg page is at most 65,307 bytes
    tail = f.read()
  start = tail.rfind(b"OggS")
  while start >= 0 and (start + 6 > len(tail) or tail[start + 4] != 0):
    start = tail.rfind(b"OggS", 0, start)  # "OggS" inside packet data, not a page header
  return start >= 0 and bool(tail[start + 5] & 0x04)


_probe_cache: collections.OrderedDict[tuple, Decoded] = collections.OrderedDict()
_probe_lock = threading.Lock()


def _file_key(path: str) -> tuple:
  stat = os.stat(path)
  return (os.path.realpath(path), stat.st_size, stat.st_mtime_ns)


def probe(path: str | os.PathLike) -> Decoded:
  """Decodes the whole file once (cached while it is unchanged) and says what it holds.

  Raises DecodeError when FFmpeg cannot open it, finds no audio stream or decodes nothing.
  """
  path = str(path)
  key = _file_key(path)
  with _probe_lock:
    if key in _probe_cache:
      _probe_cache.move_to_end(key)
      return _probe_cache[key]
  frames, rate, channels = 0, None, None
  blocks = _decode(path)
  problem = None
  try:
    while True:
      block, rate = next(blocks)
      frames += block.shape[1]
      channels = block.shape[0]
  except StopIteration as stop:
    problem = stop.value
  if frames == 0 or not rate:
    raise DecodeError(f"no audio decoded{f' ({problem})' if problem else ''}")
  container, stream = _open(path)
  with container:
    codec = stream.codec_context.name
    container_name = container.format.name.split(",")[0]
    stated = _stated_frames(path, container, stream, rate)
  seconds = frames / rate
  if stated is not None and stated - frames > _TRUNCATION_TOLERANCE_SECONDS * rate:
    problem = f"truncated: {seconds:.1f} s of {stated / rate:.1f} s could be decoded"
  elif problem is not None:
    problem = f"truncated: {problem} after {seconds:.1f} s"
  elif container_name == "ogg" and not ogg_ends_cleanly(path):
    problem = f"truncated: the Ogg stream ends without its end mark after {seconds:.1f} s"
  decoded = Decoded(rate, channels, frames, container_name, codec, problem)
  with _probe_lock:
    _probe_cache[key] = decoded
    while len(_probe_cache) > _PROBE_CACHE_SIZE:
      _probe_cache.popitem(last=False)
  return decoded


class _Cursor:
  """An open decode of one file, read forward; keeps a little history behind the last read."""

  def __init__(self, path: str):
    self.lock = threading.Lock()
    self._blocks = _decode(path)
    self._buffer: collections.deque[np.ndarray] = collections.deque()
    self.start = 0  # frame index of the buffer's first frame
    self._end = 0
    self._done = False

  def read(self, start: int, stop: int) -> np.ndarray:
    """Frames ``[start, stop)`` as ``[C, n]`` (fewer at the end); needs start >= self.start."""
    while self._end < stop and not self._done:
      try:
        block, _ = next(self._blocks)
      except StopIteration:
        self._done = True
        break
      self._buffer.append(block)
      self._end += block.shape[1]
    if not self._buffer:
      return np.zeros((0, 0), np.float32)
    joined = np.concatenate(self._buffer, axis=1) if len(self._buffer) > 1 else self._buffer[0]
    result = joined[:, start - self.start : stop - self.start]
    new_start = min(max(self.start, start - _CURSOR_HISTORY_FRAMES), self._end)
    self._buffer = collections.deque([joined[:, new_start - self.start :]])
    self.start = new_start
    return result


_cursors: collections.OrderedDict[tuple, _Cursor] = collections.OrderedDict()
_cursor_lock = threading.Lock()


def read_frames(path: str | os.PathLike, start: int, stop: int) -> np.ndarray:
  """Native frames ``[start, stop)`` as ``float32 [C, n]`` (fewer where the file ends).

  Compressed formats cannot seek exactly, so the file is decoded from its start; an open
  decode is kept for each of the last few files, so reading a file front to back in blocks
  (as the separator does) decodes it once.
  """
  path = str(path)
  key = _file_key(path)
  with _cursor_lock:
    cursor = _cursors.pop(key, None)
    if cursor is None or start < cursor.start:
      cursor = _Cursor(path)
    _cursors[key] = cursor
    while len(_cursors) > _CURSOR_CACHE_SIZE:
      _cursors.popitem(last=False)
  with cursor.lock:
    if start >= cursor.start:
      return np.ascontiguousarray(cursor.read(start, stop))
  fresh = _Cursor(path)  # another thread moved that one on meanwhile
  with fresh.lock:
    with _cursor_lock:
      _cursors[key] = fresh
    return np.ascontiguousarray(fresh.read(start, stop))


# What MPEG-1/2 Layer III holds (LAME refuses other rates and more than two channels).
MP3_SAMPLE_RATES_HZ = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)


def check_mp3_input(sample_rate_hz: int, channels: int, *, name: str) -> None:
  """Raises ValueError naming ``name`` if MP3 cannot hold audio of this rate and width."""
  if sample_rate_hz not in MP3_SAMPLE_RATES_HZ:
    raise ValueError(
      f"{name}: MP3 cannot hold {sample_rate_hz} Hz (it holds "
      f"{', '.join(str(r) for r in MP3_SAMPLE_RATES_HZ)} Hz); write WAV or FLAC"
    )
  if channels > 2:
    raise ValueError(f"{name}: MP3 holds one or two channels, not {channels}; write WAV or FLAC")


class Mp3Writer:
  """Streams ``[time, channels]`` float blocks into an MP3 file (LAME, constant bitrate).

  The interface is soundfile.SoundFile's ``write``/``close``, so the separator writes MP3
  stems the way it writes the others.
  """

  def __init__(self, path, sample_rate_hz: int, channels: int, bitrate_kbps: int = 320):
    check_mp3_input(sample_rate_hz, channels, name=str(path))
    av = _av()
    self._layout = "mono" if channels == 1 else "stereo"
    self._rate = int(sample_rate_hz)
    self._container = av.open(str(path), "w", format="mp3")
    try:
      self._stream = self._container.add_stream("libmp3lame", rate=self._rate)
      self._stream.layout = self._layout
      self._stream.bit_rate = int(bitrate_kbps) * 1000
    except BaseException:
      self._container.close()
      raise
    self._pts = 0
    self._closed = False

  def write(self, data: np.ndarray) -> None:
    """``data [time, channels]`` in [-1, 1]."""
    if not data.shape[0]:
      return
    av = _av()
    planar = np.ascontiguousarray(np.asarray(data, np.float32).T)
    frame = av.AudioFrame.from_ndarray(planar, format="fltp", layout=self._layout)
    frame.sample_rate = self._rate
    frame.pts = self._pts
    self._pts += planar.shape[1]
    for packet in self._stream.encode(frame):
      self._container.mux(packet)

  def close(self) -> None:
    if self._closed:
      return
    self._closed = True
    try:
      for packet in self._stream.encode(None):
        self._container.mux(packet)
    finally:
      self._container.close()
