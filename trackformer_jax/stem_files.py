"""Writing a separated song into its folder: whole or not at all, never silently clipped.

The stems are written, block by block as the separator hands them on, into a hidden
temporary folder beside the output folder, which is renamed into place at the end (an older
result is replaced only then). A stop request (Ctrl-C, see ``interrupts``) is answered
between blocks and before the rename: the temporary folder is removed and an older result
stays as it was.

Formats with a fixed range (16/24-bit PCM, Vorbis, MP3) cannot hold samples beyond ±1,
which a loud input's stems can reach. ``clip_mode``:

* ``rescale`` (the default, as in Demucs): every stem of the track is scaled by one factor,
  ``1 / peak``, so they still sum to the input scaled by the same factor. The peak is known
  only once the song is separated, so a track that needs it is separated a second time
  with the factor applied (the stems are streamed, not held in memory or written twice).
* ``clamp``: samples beyond ±1 are set to ±1 (the stems no longer sum to the input there).

Either way a warning names the file and the factor or the number of samples changed.
Float WAV (``--float32``) holds any value and is written unchanged.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import tempfile
import warnings
from collections.abc import Callable

import numpy as np
import soundfile

from trackformer_jax import decode, interrupts, separation_plots

CLIP_MODES = ("rescale", "clamp")
EXTENSIONS = {"WAV": "wav", "FLAC": "flac", "OGG": "ogg", "MP3": "mp3"}

Warn = Callable[[str], None]


def track_name(path: str | os.PathLike) -> str:
  """The output folder's name: the file's stem, or its folder's name for a MUSDB-style
  ``<song>/mixture.wav`` (every such song would otherwise be called "mixture")."""
  # Normalised first: in "../mixture.wav" the folder's name is "..", which would send the
  # output to the root's parent and replace that whole folder.
  path = pathlib.Path(os.path.abspath(path))
  name = path.stem
  if name == "mixture" and path.parent.name:
    name = path.parent.name
  if name in ("", ".", ".."):  # "..wav" has the stem ".": the output root itself
    name = path.name
  return name


def clips(subtype: str, file_format: str) -> bool:
  """Whether the output format holds only [-1, 1]."""
  return file_format == "MP3" or subtype.startswith("PCM") or subtype == "VORBIS"


def _open_writers(staging, names, extension, info, subtype, file_format, mp3_bitrate_kbps):
  writers = []
  try:
    for stem in names:
      file = staging / f"{stem}.{extension}"
      if file_format == "MP3":
        writers.append(decode.Mp3Writer(file, info.sample_rate_hz, info.channels, mp3_bitrate_kbps))
      else:
        writers.append(
          soundfile.SoundFile(
            file,
            "w",
            samplerate=info.sample_rate_hz,
            channels=info.channels,
            subtype=subtype,
            format=file_format,
          )
        )
  except BaseException:
    for writer in writers:
      writer.close()
    raise
  return writers


def _write_pass(separator, path, info, staging, extension, options, scale, plotter) -> tuple:
  """Separates ``path`` once into ``staging``, stems times ``scale``; returns the peak
  ``max |stem|`` (before any clamping) and the number of samples beyond ±1."""
  subtype, file_format, mp3_bitrate_kbps, stop = options
  names = separator.output_names
  writers = _open_writers(staging, names, extension, info, subtype, file_format, mp3_bitrate_kbps)
  limited = clips(subtype, file_format)
  peak, beyond = 0.0, 0
  try:
    blocks = separator.iter_blocks(
      separator.file_reader(path), info.frames, info.channels, info.sample_rate_hz, name=str(path)
    )
    for block in blocks:  # [N, C, n]
      if stop is not None:
        stop.raise_if_set(str(path))
      if scale != 1.0:
        block = block * np.float32(scale)
      stems = separator.name_outputs(block)
      for writer, stem in zip(writers, names):
        data = stems[stem].T
        if data.size:
          peak = max(peak, float(np.abs(data).max()))
        if limited:
          beyond += int(np.count_nonzero(np.abs(data) > 1.0))
          # libsndfile wraps integer overflows around instead of clipping them.
          data = np.clip(data, -1.0, 1.0)
        writer.write(data)
      if plotter is not None:
        plotter.push(block, stems)
  finally:
    for writer in writers:
      writer.close()
  return peak, beyond


def write_stems(
  separator,
  path: str | os.PathLike,
  out_dir: str | os.PathLike,
  *,
  subtype: str = "PCM_16",
  file_format: str = "WAV",
  plots: bool = False,
  clip_mode: str = "rescale",
  mp3_bitrate_kbps: int = 320,
  stop: interrupts.StopRequest | None = None,
  warn: Warn | None = None,
) -> dict[str, pathlib.Path]:
  """Separates ``path`` with ``separator`` into ``out_dir/<stem>.<ext>`` (see the module).

  ``warn(message)`` receives each warning (default: ``warnings.warn``); messages start with
  the input's path. Raises ``interrupts.Interrupted`` when ``stop`` is set meanwhile, having
  removed everything it wrote. Returns ``{stem: file}`` (and ``{"plot": file}``).
  """
  if clip_mode not in CLIP_MODES:
    raise ValueError(f"clip mode must be one of {CLIP_MODES}, got {clip_mode!r}")
  warn = warn or (lambda message: warnings.warn(message, stacklevel=3))
  info = separator.checked_info(path)
  if info.warning:
    warn(f"{path}: {info.warning}; separating what was read")
  out_dir = pathlib.Path(out_dir)
  out_dir.parent.mkdir(parents=True, exist_ok=True)
  extension = EXTENSIONS[file_format]
  if file_format == "MP3":
    decode.check_mp3_input(info.sample_rate_hz, info.channels, name=str(path))
  names = separator.output_names
  staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
  if stop is not None:
    stop.add_folder(staging)
  options = (subtype, file_format, mp3_bitrate_kbps, stop)

  def new_plotter():
    if not plots:
      return None
    return separation_plots.PlotAccumulator(
      names, separator.model.num_outputs, info.sample_rate_hz, info.frames
    )

  try:
    plotter = new_plotter()
    peak, beyond = _write_pass(separator, path, info, staging, extension, options, 1.0, plotter)
    if beyond and clip_mode == "rescale":
      scale = 1.0 / peak
      plotter = new_plotter()
      _write_pass(separator, path, info, staging, extension, options, scale, plotter)
      warn(
        f"{path}: the stems peak at {peak:.3f}, beyond what {file_format} {subtype} holds; "
        f"every stem scaled by {scale:.4f} (--clip-mode rescale), so they sum to the input "
        "scaled by the same"
      )
    elif beyond:
      warn(
        f"{path}: {beyond} samples beyond ±1 (peak {peak:.3f}) clamped to ±1 "
        "(--clip-mode clamp); the stems no longer sum to the input there"
      )
    if plotter is not None:
      plotter.save(staging / "plot.png", title=track_name(path))
    if stop is not None:
      stop.raise_if_set(str(path))
    _move_into_place(staging, out_dir)
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise
  finally:
    if stop is not None:
      stop.discard_folder(staging)
  written = {stem: out_dir / f"{stem}.{extension}" for stem in names}
  if plots:
    written["plot"] = out_dir / "plot.png"
  return written


def _move_into_place(staging: pathlib.Path, out_dir: pathlib.Path) -> None:
  """Renames ``staging`` to ``out_dir``, replacing an older result only now."""
  if not out_dir.exists():
    os.replace(staging, out_dir)
    return
  old = pathlib.Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old.", dir=out_dir.parent))
  os.replace(out_dir, old / out_dir.name)
  os.replace(staging, out_dir)
  shutil.rmtree(old)
