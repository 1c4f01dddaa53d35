"""Copies of a source's files at the model's rate, made once, for training to read.

A training crop read from a file at another rate is resampled on every read, which is most
of the read's cost (44.1 kHz to 16 kHz: about 3 of 5 ms for 2 s); a mixture remixed from
four songs reads eight crops. With ``config.resampled_copies`` the training stream reads
instead a copy of each file resampled whole (and mixed to the model's channels), kept as
float WAV in ``$XDG_CACHE_HOME/trackformer_jax/resampled/<digest>/<file name>``. The digest
covers the file's real path, size and modification time and the rate and channel count, so
an edited file gets a new copy and an old copy is never read for it. Whole-file resampling
agrees with a crop's resampling to within 2e-4 (tests/test_audio.py): the stream is the same
up to that, not bit for bit. Files already at the model's rate are read as they are.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from trackformer_jax import audio
from trackformer_jax.data import soundfont
from trackformer_jax.data.tracks import Track

log = logging.getLogger(__name__)


def cache_dir() -> Path:
  """Where the copies are kept."""
  return soundfont.cache_root() / "resampled"


def copy_path(path: str, sample_rate_hz: int, channels: int) -> Path:
  """Where the copy of ``path`` at this rate and channel count lives (made or not)."""
  digest = soundfont.file_digest(path, sample_rate_hz, channels, length=16)
  return cache_dir() / digest / (Path(path).stem + ".wav")


def at_rate(path: str, sample_rate_hz: int, channels: int) -> str:
  """``path`` itself when it is at ``sample_rate_hz``; else its copy, made if missing.

  Raises AudioError naming ``path`` when it cannot be read whole.
  """
  if audio.audio_info(path).sample_rate_hz == sample_rate_hz:
    return path
  copy = copy_path(path, sample_rate_hz, channels)
  if not copy.is_file():
    samples = audio.read_audio(path, sample_rate_hz=sample_rate_hz, channels=channels)
    copy.parent.mkdir(parents=True, exist_ok=True)
    audio.write_audio(copy, samples, sample_rate_hz, subtype="FLOAT")  # whole or not at all
  return str(copy)


def tracks_at_rate(tracks: list, *, with_stems: bool) -> list:
  """``tracks`` reading copies at their own ``sample_rate_hz`` (mixtures, and stems when
  ``with_stems``). Other kinds of track (prepared TFDS chunks) are kept as they are; a track
  one of whose files cannot be read whole is left out with a warning naming the file."""
  kept = []
  for track in tracks:
    if not isinstance(track, Track):
      kept.append(track)
      continue
    rate, channels = track.sample_rate_hz, track.channels
    try:
      changes = {"mixture_files": tuple(at_rate(f, rate, channels) for f in track.mixture_files)}
      if with_stems and track.stem_files is not None:
        changes["stem_files"] = tuple(
          tuple(at_rate(f, rate, channels) for f in group) for group in track.stem_files
        )
    except audio.AudioError as e:
      log.warning("Leaving out %s: %s", track.track_id, e)
      continue
    kept.append(dataclasses.replace(track, **changes))
  log.info("Training reads %d tracks at the model's rate (copies in %s)", len(kept), cache_dir())
  return kept
