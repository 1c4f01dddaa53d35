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

import errno
import os
import pathlib
import posixpath
import shutil
import string
import tempfile
import warnings
from collections.abc import Callable, Mapping

import numpy as np
import soundfile

from trackformer_jax import decode, interrupts, separation_plots
from trackformer_jax.atomic_files import follow_umask
from trackformer_jax.command_line import CLIP_MODES

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


# --filename: where each stem of a track goes, below <out>/<name>/ (Demucs's fields, and the
# input's folder so that two songs of one name from different folders can be kept apart).
FILENAME_TEMPLATE = "{track}/{stem}.{ext}"
FILENAME_FIELDS = {
  "track": "the track's name (the file's stem; for .../<song>/mixture.wav, <song>)",
  "trackext": "the input's extension, without the dot",
  "folder": "the name of the input's folder",
  "stem": "the stem (output_i, or a stem map's names)",
  "ext": "the output format's extension",
}


def check_filename_template(template: str) -> None:
  """ValueError naming the problem unless ``template`` uses only ``FILENAME_FIELDS``,
  holds ``{stem}`` (else every stem of a track would write one file) and stays inside the
  output folder."""
  try:
    fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
  except ValueError as e:
    raise ValueError(f"--filename {template!r}: {e}") from None
  unknown = sorted({f for f in fields if f not in FILENAME_FIELDS})
  if unknown:
    raise ValueError(
      f"--filename {template!r}: unknown field {{{unknown[0]}}}; the fields are "
      + ", ".join(f"{{{f}}}" for f in FILENAME_FIELDS)
    )
  if "stem" not in fields:
    raise ValueError(f"--filename {template!r}: needs {{stem}}, or every stem would write one file")
  if template.startswith("/") or ".." in pathlib.PurePosixPath(template).parts:
    raise ValueError(f"--filename {template!r}: must stay inside the output folder (no / or ..)")


def filename_values(path: str | os.PathLike) -> dict[str, str]:
  """The track's fields of ``FILENAME_FIELDS`` (all but stem and ext)."""
  absolute = pathlib.Path(os.path.abspath(path))
  return {
    "track": track_name(path),
    "trackext": absolute.suffix.lstrip("."),
    "folder": absolute.parent.name or "_",
  }


def track_folder(template: str, root: pathlib.Path, path) -> pathlib.Path | None:
  """The folder that holds exactly this track's files under ``template`` (``<track>/`` by
  default), to be put in place whole; None when its files go into shared folders."""
  head, tail = posixpath.split(template)
  head_fields = {f for _, f, _, _ in string.Formatter().parse(head) if f is not None}
  if not head or tail != "{stem}.{ext}" or head_fields & {"stem", "ext"}:
    return None
  return root / head.format(**filename_values(path))


def output_files(
  template: str, root: pathlib.Path, path, stems, extension: str, plots: bool
) -> dict[str, pathlib.Path]:
  """``{stem: file}`` (and ``"plot"``: the template with stem ``plot``, extension ``png``)."""
  values = filename_values(path)
  files = {s: root / template.format(**values, stem=s, ext=extension) for s in stems}
  if plots:
    files["plot"] = root / template.format(**values, stem="plot", ext="png")
  return files


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
  file_format: str = "WAV",
  plots: bool = False,
  **options,
) -> dict[str, pathlib.Path]:
  """Separates ``path`` with ``separator`` into ``out_dir/<stem>.<ext>`` (see the module).

  The folder is put in place whole, replacing an older one only at the end. Options as
  ``write_stem_files``. Returns ``{stem: file}`` (and ``{"plot": file}``).
  """
  out_dir = pathlib.Path(out_dir)
  extension = EXTENSIONS[file_format]
  files = {stem: out_dir / f"{stem}.{extension}" for stem in separator.output_names}
  if plots:
    files["plot"] = out_dir / "plot.png"
  return _write(separator, path, files, out_dir, file_format=file_format, **options)


def write_stem_files(
  separator,
  path: str | os.PathLike,
  files: Mapping[str, pathlib.Path],
  *,
  subtype: str = "PCM_16",
  file_format: str = "WAV",
  clip_mode: str = "rescale",
  mp3_bitrate_kbps: int = 320,
  stop: interrupts.StopRequest | None = None,
  warn: Warn | None = None,
) -> dict[str, pathlib.Path]:
  """Separates ``path`` into ``files`` (``{stem: file}`` for every output name, and
  ``"plot"`` for a PNG), each file replaced only once every one is written.

  ``warn(message)`` receives each warning (default: ``warnings.warn``); messages start with
  the input's path. Raises ``interrupts.Interrupted`` when ``stop`` is set meanwhile, having
  removed everything it wrote; a full disk is an ``OSError`` naming ENOSPC and the output.
  """
  return _write(
    separator, path, files, None, subtype=subtype, file_format=file_format,
    clip_mode=clip_mode, mp3_bitrate_kbps=mp3_bitrate_kbps, stop=stop, warn=warn,
  )  # fmt: skip


def _write(
  separator, path, files, out_dir, *, subtype="PCM_16", file_format="WAV", clip_mode="rescale",
  mp3_bitrate_kbps=320, stop=None, warn=None,
) -> dict[str, pathlib.Path]:  # fmt: skip
  """``files`` written through one staging folder; with ``out_dir`` (every file in it, and
  nothing else), the folder itself is renamed into place."""
  if clip_mode not in CLIP_MODES:
    raise ValueError(f"clip mode must be one of {CLIP_MODES}, got {clip_mode!r}")
  warn = warn or (lambda message: warnings.warn(message, stacklevel=4))
  info = separator.checked_info(path)
  if info.warning:
    warn(f"{path}: {info.warning}; separating what was read")
  extension = EXTENSIONS[file_format]
  if file_format == "MP3":
    decode.check_mp3_input(info.sample_rate_hz, info.channels, name=str(path))
  names = separator.output_names
  plots = "plot" in files
  if out_dir is not None:
    home, prefix = out_dir.parent, f".{out_dir.name}."
  else:
    home = pathlib.Path(os.path.commonpath([os.path.abspath(f.parent) for f in files.values()]))
    prefix = f".{track_name(path)}."
  home.mkdir(parents=True, exist_ok=True)
  staging = pathlib.Path(tempfile.mkdtemp(prefix=prefix, dir=home))
  if out_dir is not None:
    follow_umask(staging, folder=True)  # it becomes out_dir
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
    if out_dir is not None:
      _move_into_place(staging, out_dir)
    else:
      for stem, file in files.items():
        file.parent.mkdir(parents=True, exist_ok=True)
        staged = "plot.png" if stem == "plot" else f"{stem}.{extension}"
        os.replace(staging / staged, file)
      staging.rmdir()
  except BaseException as e:
    shutil.rmtree(staging, ignore_errors=True)
    if isinstance(e, (OSError, soundfile.LibsndfileError)) and _disk_full(e, home):
      target = out_dir if out_dir is not None else home
      raise DiskFullError(
        f"{path}: ENOSPC: no space left on device for {target}; nothing of this track was kept"
      ) from None
    raise
  finally:
    if stop is not None:
      stop.discard_folder(staging)
  return dict(files)


class DiskFullError(OSError):
  """The output's file system is full (ENOSPC) or the user's quota spent (EDQUOT)."""


# libsndfile reports a failed write as "System error." and keeps the errno to itself; a
# write that fails with less than this free is taken for a full disk.
_NEARLY_FULL_BYTES = 1 << 20


def _disk_full(error: BaseException, folder: pathlib.Path) -> bool:
  if getattr(error, "errno", None) in (errno.ENOSPC, errno.EDQUOT):
    return True
  if not isinstance(error, soundfile.LibsndfileError):
    return False
  try:
    return shutil.disk_usage(folder).free < _NEARLY_FULL_BYTES
  except OSError:
    return False


def _move_into_place(staging: pathlib.Path, out_dir: pathlib.Path) -> None:
  """Renames ``staging`` to ``out_dir``, replacing an older result only now."""
  if not out_dir.exists():
    os.replace(staging, out_dir)
    return
  old = pathlib.Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old.", dir=out_dir.parent))
  os.replace(out_dir, old / out_dir.name)
  os.replace(staging, out_dir)
  shutil.rmtree(old)
