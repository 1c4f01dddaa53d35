"""The project's one audio reader and writer (soundfile + soxr, FFmpeg through ``decode``).

Every other module reads and writes audio through here, so that resampling, channel
conversion and the checks on bad files happen in exactly one place. Arrays are
``float32 [channels, time]``; a problem with a file raises :class:`AudioError`, whose
message names the file and what is wrong with it.

WAV, FLAC, AIFF and Ogg are read by soundfile (libsndfile: fast, exact seeks). MP3 (whose
length libsndfile estimates from the header, wrongly without a Xing header) and everything
libsndfile cannot open (AAC/M4A, ALAC, WMA, Opus it rejects, ...) are decoded by FFmpeg
(``decode``), with the length taken from a whole decode. A truncated compressed file is
read as far as it decodes; ``AudioInfo.warning`` says so, naming the seconds read.
"""

from __future__ import annotations

import dataclasses
import math
import os
import struct
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from trackformer_jax import decode
from trackformer_jax.atomic_files import atomic_path

# Source samples read on each side of a resampled segment, so that the resampling filter
# sees real signal at the segment's edges instead of an implicit zero (soxr's HQ filter is
# a few hundred taps long at the usual rate ratios).
_RESAMPLE_CONTEXT_FRAMES = 2048

# Blocks of this many frames bound the memory of whole-file scans (verify_audio).
_SCAN_BLOCK_FRAMES = 1 << 20

_SUBTYPES = ("PCM_16", "PCM_24", "FLOAT")

# libsndfile formats whose length or decoding is unreliable: FFmpeg decodes these.
_FFMPEG_FORMATS = ("MP3", "MPEG")
# Extensions that go to FFmpeg without asking libsndfile first (which cannot open them, or
# for MP3, prints mpg123's warnings on stderr while it estimates the length).
_FFMPEG_EXTENSIONS = (".mp3", ".mp2", ".m4a", ".m4b", ".mp4", ".aac", ".wma", ".webm", ".mka")

# Sample rates outside this range are taken for a damaged or hostile header.
MIN_SAMPLE_RATE_HZ = 1000
MAX_SAMPLE_RATE_HZ = 768000


class AudioError(ValueError):
  """A file that cannot be used: ``"<path>: <problem>"``."""

  def __init__(self, path: str | os.PathLike, problem: str):
    self.path = str(path)
    self.problem = problem
    super().__init__(f"{self.path}: {problem}")


@dataclasses.dataclass(frozen=True)
class AudioInfo:
  """What a file holds (native rate and channels).

  ``decoder`` is ``"soundfile"`` or ``"ffmpeg"`` (then ``format`` is FFmpeg's container and
  ``subtype`` its codec, and ``frames`` what decodes). ``warning`` is None for a whole file,
  else what is missing (``"truncated: ..."``): the frames that could be read are usable.
  """

  path: str
  sample_rate_hz: int
  channels: int
  frames: int
  format: str
  subtype: str
  decoder: str = "soundfile"
  warning: str | None = None

  @property
  def duration_seconds(self) -> float:
    return self.frames / self.sample_rate_hz


def _wav_declared_frames(path: str, info: sf._SoundFileInfo) -> int | None:
  """Frames the WAV ``data`` chunk declares, or None when it cannot tell.

  libsndfile silently shortens a truncated WAV to what is on disk, so a cut-off download
  would otherwise look like a shorter song. The RIFF header still holds the intended size.
  """
  if info.format not in ("WAV", "WAVEX"):
    return None
  block_align = None
  try:
    with open(path, "rb") as f:
      if f.read(4) != b"RIFF":
        return None
      f.read(4)
      if f.read(4) != b"WAVE":
        return None
      while True:
        header = f.read(8)
        if len(header) < 8:
          return None
        chunk_id, chunk_size = header[:4], struct.unpack("<I", header[4:])[0]
        if chunk_id == b"fmt ":
          fmt = f.read(chunk_size)
          if len(fmt) >= 14:
            block_align = struct.unpack("<H", fmt[12:14])[0]
          if chunk_size % 2:
            f.read(1)
        elif chunk_id == b"data":
          # Streaming writers leave 0 or 0xFFFFFFFF here: the size is unknown, not wrong.
          if not block_align or chunk_size in (0, 0xFFFFFFFF):
            return None
          return chunk_size // block_align
        else:
          f.seek(chunk_size + (chunk_size % 2), os.SEEK_CUR)
  except OSError:
    return None


def audio_info(path: str | os.PathLike) -> AudioInfo:
  """What a file holds; raises AudioError if it is missing, unreadable, empty or truncated.

  A header for soundfile's formats; a whole decode (cached) for FFmpeg's, where a truncated
  file is not an error but sets ``warning``.
  """
  path = str(path)
  if not os.path.exists(path):
    raise AudioError(path, "no such file")
  if os.path.isdir(path):
    raise AudioError(path, "is a folder, not an audio file")
  if Path(path).suffix.lower() in _FFMPEG_EXTENSIONS:
    return _ffmpeg_info(path)
  try:
    info = sf.info(path)
  except (sf.LibsndfileError, RuntimeError, TypeError) as e:
    return _ffmpeg_info(path, libsndfile_error=str(e))
  if info.format in _FFMPEG_FORMATS:
    return _ffmpeg_info(path)
  if info.frames <= 0:
    raise AudioError(path, "empty: the file holds no audio frames")
  if info.samplerate <= 0 or info.channels <= 0:
    raise AudioError(path, f"bad header: {info.samplerate} Hz, {info.channels} channels")
  _check_rate(path, info.samplerate)
  declared = _wav_declared_frames(path, info)
  if declared is not None and declared > info.frames:
    raise AudioError(
      path, f"truncated: the header declares {declared} frames but the file holds {info.frames}"
    )
  if info.format == "FLAC" and not _last_frame_reads(path, info.frames):
    # libsndfile takes the length from STREAMINFO and loses sync where a cut file ends,
    # after all the work; FFmpeg decodes what is there and says how much.
    return _ffmpeg_info(path)
  warning = None
  seconds = info.frames / info.samplerate
  if info.format == "OGG" and not decode.ogg_ends_cleanly(path):
    warning = f"truncated: the Ogg stream ends without its end mark after {seconds:.1f} s"
  elif info.format == "AIFF":
    # libsndfile silently shortens a cut AIFF to what is there, as it does a WAV.
    stated = decode.stated_frames(path)
    if stated is not None and stated > info.frames:
      warning = f"truncated: {seconds:.1f} s of {stated / info.samplerate:.1f} s could be read"
  return AudioInfo(
    path=path,
    sample_rate_hz=int(info.samplerate),
    channels=int(info.channels),
    frames=int(info.frames),
    format=str(info.format),
    subtype=str(info.subtype),
    warning=warning,
  )


def _last_frame_reads(path: str, frames: int) -> bool:
  try:
    with sf.SoundFile(path) as f:
      f.seek(frames - 1)
      return f.read(1, dtype="float32").shape[0] == 1
  except (sf.LibsndfileError, RuntimeError):
    return False


def _check_rate(path: str, rate_hz: float) -> None:
  if not MIN_SAMPLE_RATE_HZ <= rate_hz <= MAX_SAMPLE_RATE_HZ:
    # A header claiming 1 Hz makes a few kilobytes "days long" once resampled: reading or
    # separating it would take hours and fill memory instead of failing.
    raise AudioError(
      path,
      f"implausible sample rate {rate_hz} Hz "
      f"(expected {MIN_SAMPLE_RATE_HZ} to {MAX_SAMPLE_RATE_HZ} Hz)",
    )


def _ffmpeg_info(path: str, libsndfile_error: str | None = None) -> AudioInfo:
  """A file decoded by FFmpeg: its length is what decodes (one whole decode, cached)."""
  try:
    decoded = decode.probe(path)
  except decode.DecodeError as e:
    if libsndfile_error is None:
      raise AudioError(path, f"unreadable audio (FFmpeg: {e})") from None
    # libsndfile's messages start "Error opening '<path>': "; the path leads ours already.
    reason = libsndfile_error.split("': ", 1)[-1]
    raise AudioError(path, f"unreadable audio (libsndfile: {reason} FFmpeg: {e})") from None
  _check_rate(path, decoded.sample_rate_hz)
  return AudioInfo(
    path=path,
    sample_rate_hz=decoded.sample_rate_hz,
    channels=decoded.channels,
    frames=decoded.frames,
    format=decoded.container.upper(),
    subtype=decoded.codec.upper(),
    decoder="ffmpeg",
    warning=decoded.problem,
  )


def convert_channels(audio: np.ndarray, channels: int, *, path: str = "<array>") -> np.ndarray:
  """``[C_in, T] -> [channels, T]``: mono is repeated, many -> mono is their mean."""
  c_in = audio.shape[0]
  if c_in == channels:
    return audio
  if c_in == 1:
    return np.repeat(audio, channels, axis=0)
  if channels == 1:
    return audio.mean(axis=0, keepdims=True)
  raise AudioError(path, f"cannot convert {c_in} channels to {channels}")


def output_frames(frames: int, from_rate_hz: int, to_rate_hz: int) -> int:
  """The length a file of ``frames`` frames has once resampled (rounded down)."""
  return (frames * to_rate_hz) // from_rate_hz


def _read_frames(info: AudioInfo, start: int, stop: int) -> np.ndarray:
  """Native frames ``[start, stop)`` (clamped to the file) as ``float32 [channels, time]``.

  The result may be a transposed view of soundfile's ``[time, channels]`` buffer: callers
  convert channels first and copy once at the end.
  """
  path = info.path
  if info.decoder == "ffmpeg":
    start = min(max(start, 0), info.frames)
    stop = min(max(stop, start), info.frames)
    try:
      data = decode.read_frames(path, start, stop)
    except decode.DecodeError as e:
      raise AudioError(path, f"unreadable audio (FFmpeg: {e})") from None
    if data.shape[-1] != stop - start:
      raise AudioError(
        path, f"truncated: asked for frames {start}..{stop} but only {data.shape[-1]} decoded"
      )
    return data.reshape(info.channels, -1)
  try:
    with sf.SoundFile(path) as f:
      start = min(max(start, 0), f.frames)
      stop = min(max(stop, start), f.frames)
      f.seek(start)
      data = f.read(stop - start, dtype="float32", always_2d=True)
  except (sf.LibsndfileError, RuntimeError) as e:
    raise AudioError(path, f"unreadable audio ({e})") from None
  if data.shape[0] != stop - start:
    raise AudioError(
      path, f"truncated: asked for frames {start}..{stop} but only {data.shape[0]} could be read"
    )
  return data.T


def _check_finite(path: str, audio: np.ndarray, offset: int, subtype: str = "FLOAT") -> None:
  # Integer PCM cannot hold NaN/inf; only float files need the scan (every FFmpeg decode is
  # scanned: its subtype is a codec name).
  if subtype.startswith("PCM"):
    return
  if not np.isfinite(audio).all():
    bad = np.argwhere(~np.isfinite(audio))[0]
    raise AudioError(path, f"NaN or infinite sample at frame {offset + int(bad[1])}")


def read_audio(
  path: str | os.PathLike,
  *,
  start_frame: int = 0,
  num_frames: int | None = None,
  sample_rate_hz: int | None = None,
  channels: int | None = None,
) -> np.ndarray:
  """Reads one segment of a file as ``float32 [channels, num_frames]``.

  ``start_frame`` and ``num_frames`` count frames at the *output* rate (``sample_rate_hz``,
  or the file's own rate when None). Only the requested span is read from disk (plus a
  little context when resampling), so memory does not grow with the file's length. A
  segment that runs past the end is zero-padded to exactly ``num_frames`` frames;
  ``num_frames=None`` reads to the end.

  Raises AudioError naming the file when it is missing, unreadable, empty, truncated or
  holds NaN/inf samples in the segment read.
  """
  info = audio_info(path)
  path = info.path
  rate_out = info.sample_rate_hz if sample_rate_hz is None else int(sample_rate_hz)
  total_out = output_frames(info.frames, info.sample_rate_hz, rate_out)
  start_frame = int(start_frame)
  if start_frame < 0:
    raise AudioError(path, f"negative start frame {start_frame}")
  if num_frames is None:
    num_frames = max(total_out - start_frame, 0)
  num_frames = int(num_frames)
  if rate_out == info.sample_rate_hz:
    audio = _read_frames(info, start_frame, start_frame + num_frames)
    _check_finite(path, audio, start_frame, info.subtype)
  else:
    # Output frame k*up sits exactly on source frame k*down: start the source read on such
    # a pair, a little before the segment, so that every segment lines up with the same
    # samples a whole-file resampling would give.
    g = math.gcd(info.sample_rate_hz, rate_out)
    up, down = rate_out // g, info.sample_rate_hz // g
    context_blocks = -(-_RESAMPLE_CONTEXT_FRAMES // down)
    block0 = max(start_frame // up - context_blocks, 0)
    src_start = block0 * down
    src_stop = -(-(start_frame + num_frames) * down // up) + context_blocks * down
    source = _read_frames(info, src_start, src_stop)
    _check_finite(path, source, src_start, info.subtype)
    if source.shape[1] == 0:
      audio = np.zeros((info.channels, 0), np.float32)
    else:
      resampled = soxr.resample(source.T, info.sample_rate_hz, rate_out, quality="HQ")
      offset = start_frame - block0 * up
      audio = np.ascontiguousarray(resampled[offset : offset + num_frames].T, dtype=np.float32)
  if audio.shape[1] < num_frames:
    audio = np.pad(audio, ((0, 0), (0, num_frames - audio.shape[1])))
  if channels is not None:
    audio = convert_channels(audio, int(channels), path=path)
  return np.ascontiguousarray(audio, dtype=np.float32)


def verify_audio(path: str | os.PathLike) -> AudioInfo:
  """Reads a whole file block by block; raises AudioError on any bad or non-finite sample.

  This is the strict check run before training when ``strict_data`` is set; memory stays
  bounded by the block size, not the file's length.
  """
  info = audio_info(path)
  for start in range(0, info.frames, _SCAN_BLOCK_FRAMES):
    block = _read_frames(info, start, min(start + _SCAN_BLOCK_FRAMES, info.frames))
    _check_finite(info.path, block, start, info.subtype)
  return info


def write_audio(
  path: str | os.PathLike,
  audio: np.ndarray,
  sample_rate_hz: int,
  subtype: str = "PCM_16",
) -> None:
  """Writes ``audio [channels, time]`` atomically: a temporary name in the same folder,
  then ``os.replace``, so a reader never sees a half-written file.

  PCM subtypes hold [-1, 1]; samples beyond are an error (the caller decides whether to
  normalise or write ``"FLOAT"``), as are NaN/inf samples. An ``int16`` array with
  ``"PCM_16"`` is written verbatim (no float round trip), which is how the corpus renderer
  keeps its mixture exactly equal to the sum of its stems. The container comes from the
  file's extension (wav, flac, ogg, aiff).
  """
  path = str(path)
  audio = np.asarray(audio)
  if subtype not in _SUBTYPES:
    raise AudioError(path, f"unknown subtype {subtype!r}; expected one of {_SUBTYPES}")
  if audio.ndim != 2:
    raise AudioError(path, f"expected audio [channels, time], got shape {audio.shape}")
  if audio.shape[0] > 64:
    raise AudioError(path, f"audio of shape {audio.shape} looks like [time, channels]")
  if audio.dtype == np.int16:
    if subtype != "PCM_16":
      raise AudioError(path, f"int16 samples can only be written as PCM_16, not {subtype}")
  elif not np.issubdtype(audio.dtype, np.floating):
    raise AudioError(path, f"expected float or int16 samples, got {audio.dtype}")
  elif not np.isfinite(audio).all():
    raise AudioError(path, "refusing to write NaN or infinite samples")
  elif subtype.startswith("PCM") and audio.size and np.abs(audio).max() > 1.0:
    raise AudioError(path, f"peak {np.abs(audio).max():.3f} > 1 would clip in {subtype}")
  extension = Path(path).suffix.lstrip(".").upper()
  container = {"WAV": "WAV", "FLAC": "FLAC", "OGG": "OGG", "AIFF": "AIFF", "AIF": "AIFF"}.get(
    extension
  )
  if container is None:
    raise AudioError(path, f"unsupported extension {extension!r} (wav, flac, ogg, aiff)")
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  with atomic_path(path, prefix=".tmp-") as tmp:
    sf.write(tmp, audio.T, int(sample_rate_hz), subtype=subtype, format=container)
