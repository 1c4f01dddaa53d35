"""Data sources: a data spec string -> a :class:`Source` holding tracks with segment readers.

Specs (the same syntax as ``config.data`` and evaluate's ``--data``)::

  bundled             the bundled corpus at <repo>/data/bundled (arranged songs in many
                      styles, and chorales; ``data.bundled``), rendered on first use
  bundled:PATH        every sub-corpus (a folder with train/ and test/) of PATH as one source
  chorales            the bundled corpus at <repo>/data/chorales, rendered on first use
  chorales:PATH       a corpus rendered by ``python -m trackformer_jax.data.render``
  musdb:PATH          MUSDB18-HQ: PATH/{train,test}/<track>/{mixture,vocals,bass,drums,other}.wav
                      (or any other stems: every audio file beside mixture.wav is a stem)
  moisesdb:PATH       MOISESDB: PATH[/moisesdb_v0.1]/<uuid>/data.json + <stem>/<source>.wav
  moisesdb4:PATH      MOISESDB, only songs that have all four of vocals/bass/drums/other
  folder:PATH         any audio files under PATH, recursively; unlabeled (no stems)
  tfds:DIR            a dataset prepared by data/tfds_builders.py (its version folder, on any
                      filesystem tf.io.gfile reaches, e.g. gs://...), read by random access

Splits ("train", "validation", "test"), all by song so that no song is in two splits:

* ``musdb``: train = ``train/`` minus the standard 14-track validation subset,
  validation = that subset, test = ``test/``.
* ``chorales``, ``bundled``: the renderers already put 20 % of the songs (by hash) in
  ``test/``: train = ``train/``; validation and test = ``test/``.
* ``moisesdb``, ``folder``: 80 % / 20 % by a stable hash of the song id (the seed's
  protocol; the seed: docs/history.md): train = the 80 %; validation and test = the held-out 20 %.
* ``tfds``: the prepared splits (those of the corpus it was prepared from); where there is
  no test split (MOISESDB), test = validation. Its "tracks" are the prepared chunks, so
  crops never cross a chunk boundary: prepare with ``chunk_seconds`` >= the crop length.

Every track reads at the source's ``sample_rate_hz`` and ``channels`` (resampled and
converted by :mod:`trackformer_jax.audio`), one segment at a time.

Stems of a MUSDB-layout track (``musdb``, ``chorales``): every audio file in its folder
other than ``mixture.*`` is a stem named by its file name (``guitar.wav`` -> ``guitar``),
the four standard names first in their usual order, then the rest sorted. A folder whose
files are only standard names (or none) must have all four (a missing one is a bad track,
as in MUSDB). A track with other stems is scored by evaluate against those stems; training
and its labelled validation need the four standard stems, so to them such a track (and a
source holding one) is unlabeled (``Track.has_stems`` is False; ``has_any_stems`` True).

Bad tracks (missing or unreadable files, empty, truncated, stems of different lengths or
sample rates) are skipped with a warning and counted in ``Source.skipped``; with
``strict=True`` the first one raises :class:`DataError` instead, and every file is also
scanned for NaN/inf samples, so that a bad corpus fails before training starts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from pathlib import Path

from trackformer_jax import audio
from trackformer_jax.data import tfds_source
from trackformer_jax.data.tracks import SPLITS, STEM_NAMES, DataError, Source, Track  # noqa: F401

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif")
HOLDOUT_FRACTION = 0.2

# The standard MUSDB18 validation subset of its train folder (as used by the musdb package
# and the SiSEC/MDX evaluations).
MUSDB_VALIDATION_TRACKS = (
  "Actions - One Minute Smile",
  "Clara Berry And Wooldog - Waltz For My Victims",
  "Johnny Lokke - Promises & Lies",
  "Patrick Talbot - A Reason To Leave",
  "Triviul - Angelsaint",
  "Alexander Ross - Goodbye Bolero",
  "Fergessen - Nos Palpitants",
  "Leaf - Summerghost",
  "Skelpolu - Human Mistakes",
  "Young Griffo - Pennies",
  "ANiMAL - Rockshow",
  "James May - On The Line",
  "Meaxic - Take A Step",
  "Traffic Experiment - Sirens",
)

# MOISESDB's 11 stem kinds -> the four MUSDB stems; everything not vocals, bass or drums
# (percussion included, as MOISESDB's own 4-stem mapping does) is "other".
MOISESDB_STEM_MAP = {
  "vocals": "vocals",
  "bass": "bass",
  "drums": "drums",
  "percussion": "other",
  "guitar": "other",
  "piano": "other",
  "other_keys": "other",
  "other_plucked": "other",
  "bowed_strings": "other",
  "wind": "other",
  "other": "other",
}

log = logging.getLogger(__name__)


def holdout_fraction(song_id: str) -> float:
  """A stable number in [0, 1) from a song id (sha1, not Python's salted ``hash``)."""
  return int.from_bytes(hashlib.sha1(song_id.encode()).digest()[:8], "big") / 2**64


def hash_split(song_id: str) -> str:
  """``train`` for 80 % of songs, ``validation`` for the held-out 20 %."""
  return "validation" if holdout_fraction(song_id) >= 1.0 - HOLDOUT_FRACTION else "train"


def _track_from_files(
  track_id: str,
  song_id: str,
  split: str,
  mixture_files: list[str],
  stem_files: list[list[str]] | None,
  stem_names: tuple[str, ...] = STEM_NAMES,
  *,
  sample_rate_hz: int,
  channels: int,
  strict: bool,
) -> Track:
  """Checks a track's files agree with each other; raises AudioError/DataError if not."""
  files = list(mixture_files)
  if stem_files is not None:
    files += [f for group in stem_files for f in group]
  infos = [audio.verify_audio(f) if strict else audio.audio_info(f) for f in dict.fromkeys(files)]
  rates = {i.sample_rate_hz for i in infos}
  if len(rates) > 1:
    detail = ", ".join(f"{Path(i.path).name}: {i.sample_rate_hz} Hz" for i in infos)
    raise DataError(f"{infos[0].path}: stems have different sample rates ({detail})")
  lengths = {i.frames for i in infos}
  if len(lengths) > 1:
    detail = ", ".join(f"{Path(i.path).name}: {i.frames}" for i in infos)
    odd = _odd_ones_out(infos)
    raise DataError(
      f"{infos[0].path}: stems have different lengths in frames ({detail})"
      + (f"; {odd} not as long as {Path(infos[0].path).name}" if odd else "")
    )
  info = infos[0]
  return Track(
    track_id=track_id,
    song_id=song_id,
    split=split,
    num_frames=audio.output_frames(info.frames, info.sample_rate_hz, sample_rate_hz),
    sample_rate_hz=sample_rate_hz,
    channels=channels,
    mixture_files=tuple(mixture_files),
    stem_files=None if stem_files is None else tuple(tuple(g) for g in stem_files),
    stem_names=tuple(stem_names),
  )


def _odd_ones_out(infos) -> str:
  """The files whose length differs from the first's (the mixture's, where there is a
  mixture file), named; "" if none."""
  return ", ".join(Path(i.path).name for i in infos[1:] if i.frames != infos[0].frames)


def order_stem_names(names) -> tuple[str, ...]:
  """The four standard stems first (in ``STEM_NAMES`` order) where present, then the rest
  sorted."""
  names = set(names)
  return tuple(n for n in STEM_NAMES if n in names) + tuple(sorted(names - set(STEM_NAMES)))


def _musdb_stems(track_dir: Path) -> tuple[tuple[str, ...], list[list[str]]]:
  """``(stem_names, stem_files)`` of one MUSDB-layout track folder (see the module doc)."""
  found = {}
  for f in sorted(track_dir.iterdir()):
    if f.name.startswith(".") or not f.is_file() or f.suffix.lower() not in AUDIO_EXTENSIONS:
      continue
    if f.stem == "mixture":
      continue
    if f.stem in found:
      raise DataError(f"{f}: two files for stem {f.stem!r} ({Path(found[f.stem]).name} too)")
    found[f.stem] = str(f)
  if set(found) <= set(STEM_NAMES):
    # The standard layout: all four expected; a missing one is reported by name.
    return STEM_NAMES, [[found.get(s, str(track_dir / f"{s}.wav"))] for s in STEM_NAMES]
  names = order_stem_names(found)
  return names, [[found[n]] for n in names]


def _never_empty_split(tracks: list[Track]) -> list[Track]:
  """With few songs the 80/20 hash can leave a split empty: then the song with the most
  extreme hash moves over, so both splits exist whenever there are two songs."""
  songs = sorted({t.song_id for t in tracks}, key=holdout_fraction)
  if len(songs) < 2:
    return tracks
  splits = {t.split for t in tracks}
  move = None
  if "validation" not in splits:
    move = (songs[-1], "validation")
  elif "train" not in splits:
    move = (songs[0], "train")
  if move is None:
    return tracks
  return [dataclasses.replace(t, split=move[1]) if t.song_id == move[0] else t for t in tracks]


def _validation_from_training(spec: str, tracks: list[Track]) -> list[Track]:
  """A MUSDB layout without MUSDB18's validation names (another corpus in its folders):
  validation becomes the hash-chosen share of the training songs; test stays test."""
  training = [t for t in tracks if t.split == "train"]
  resplit = _never_empty_split(
    [dataclasses.replace(t, split=hash_split(t.song_id)) for t in training]
  )
  by_id = {t.track_id: t for t in resplit}
  held = {t.song_id for t in resplit if t.split == "validation"}
  log.warning(
    "%s: none of MUSDB18's %d validation tracks is here; validation is %d of the %d training "
    "songs instead (the %d %% chosen by a hash of the song name)",
    spec,
    len(MUSDB_VALIDATION_TRACKS),
    len(held),
    len({t.song_id for t in training}),
    round(HOLDOUT_FRACTION * 100),
  )
  return [by_id.get(t.track_id, t) for t in tracks]


def _musdb_layout_candidates(root: Path, kind: str):
  """Yields ``(track_id, song_id, split, mixture_files, stem_files)`` for a MUSDB layout."""
  if not (root / "train").is_dir() and not (root / "test").is_dir():
    raise DataError(
      f"{root}: wrong layout for {kind}: expected {root}/train/<track>/mixture.wav "
      "(and test/), found neither train/ nor test/"
    )
  validation = set(MUSDB_VALIDATION_TRACKS) if kind == "musdb" else set()
  for folder in ("train", "test"):
    if not (root / folder).is_dir():
      continue
    for track_dir in sorted(p for p in (root / folder).iterdir() if p.is_dir()):
      name = track_dir.name
      song = name
      meta = track_dir / "meta.json"
      if kind == "chorales" and not meta.is_file():
        problem = f"{track_dir}: unfinished render (no meta.json); rerun the renderer to finish it"
        yield f"{folder}/{name}", song, None, problem, None
        continue
      if meta.is_file():
        try:
          song = json.loads(meta.read_text()).get("song", name)
        except (json.JSONDecodeError, OSError, AttributeError):
          pass
      if folder == "test":
        split = "validation" if kind == "chorales" else "test"
      else:
        split = "validation" if name in validation else "train"
      mixture = [str(track_dir / "mixture.wav")]
      try:
        stem_names, stems = _musdb_stems(track_dir)
      except DataError as e:
        yield f"{folder}/{name}", song, None, str(e), None
        continue
      yield f"{folder}/{name}", song, split, mixture, (stems, stem_names)


def _moisesdb_candidates(root: Path, all_four_only: bool):
  """Yields MOISESDB tracks; ``<root>/moisesdb_v0.1/`` may be given or implied."""
  if (root / "moisesdb_v0.1").is_dir():
    root = root / "moisesdb_v0.1"
  track_dirs = sorted(p for p in root.iterdir() if p.is_dir() and (p / "data.json").is_file())
  if not track_dirs:
    raise DataError(
      f"{root}: wrong layout for moisesdb: expected <root>/moisesdb_v0.1/<track>/data.json "
      "with one folder per stem; no data.json found"
    )
  for track_dir in track_dirs:
    song = track_dir.name
    try:
      meta = json.loads((track_dir / "data.json").read_text())
      if meta.get("artist") or meta.get("song"):
        song = f"{meta.get('artist', '')} - {meta.get('song', '')}"
    except (json.JSONDecodeError, OSError, AttributeError) as e:
      yield track_dir.name, song, None, f"{track_dir / 'data.json'}: unreadable JSON ({e})", None
      continue
    groups: dict[str, list[str]] = {stem: [] for stem in STEM_NAMES}
    for stem_dir in sorted(p for p in track_dir.iterdir() if p.is_dir()):
      target = MOISESDB_STEM_MAP.get(stem_dir.name, "other")
      groups[target].extend(
        str(f) for f in sorted(stem_dir.iterdir()) if f.suffix.lower() in AUDIO_EXTENSIONS
      )
    files = [f for g in groups.values() for f in g]
    if not files:
      yield track_dir.name, song, None, f"{track_dir}: no stem audio files", None
      continue
    if all_four_only and not all(groups[s] for s in STEM_NAMES):
      missing = [s for s in STEM_NAMES if not groups[s]]
      yield track_dir.name, song, None, None, f"lacks {', '.join(missing)}"
      continue
    yield track_dir.name, song, hash_split(song), files, [groups[s] for s in STEM_NAMES]


def _folder_candidates(root: Path):
  files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)
  if not files:
    raise DataError(f"{root}: no audio files ({', '.join(AUDIO_EXTENSIONS)}) found under it")
  for f in files:
    rel = str(f.relative_to(root))
    yield rel, rel, hash_split(rel), [str(f)], None


def default_chorales_dir() -> Path:
  """Where the bundled corpus lives: ``<repo>/data/chorales``."""
  return Path(__file__).resolve().parents[2] / "data" / "chorales"


def _ensure_default_chorales() -> Path:
  from trackformer_jax.data import render

  root = default_chorales_dir()
  # Rendering is resumable and skips finished tracks, so this is cheap once built.
  if len(list(root.glob("*/*/meta.json"))) < render.QUICKSTART_TRACKS:
    log.warning("Building the bundled corpus in %s (first use, a few minutes).", root)
    try:
      render.render_corpus(
        root,
        tracks=render.QUICKSTART_TRACKS,
        seconds=render.QUICKSTART_SECONDS,
        seed=0,
        jobs=os.cpu_count() or 1,
      )
    except (RuntimeError, FileNotFoundError, ValueError) as e:
      # A missing program or SoundFont, or an older corpus in the folder: say so plainly.
      raise DataError(f"chorales: cannot build the bundled corpus: {e}") from None
  return root


def _ensure_default_bundled() -> Path:
  from trackformer_jax.data import bundled

  root = bundled.default_dir()
  if not bundled.is_complete(root):
    log.warning("Building the bundled corpus in %s (first use, a few minutes).", root)
    try:
      bundled.build(root, jobs=os.cpu_count() or 1)
    except (RuntimeError, FileNotFoundError, ValueError) as e:
      raise DataError(f"bundled: cannot build the bundled corpus: {e}") from None
  return root


def _bundled_candidates(root: Path):
  """The tracks of every sub-corpus of ``root`` (a folder with train/ or test/), as
  ``chorales`` reads one; track ids are prefixed with the sub-corpus's name."""
  parts = sorted(p for p in root.iterdir() if (p / "train").is_dir() or (p / "test").is_dir())
  if not parts:
    raise DataError(
      f"{root}: wrong layout for bundled: expected sub-corpora such as {root}/songs/train/ "
      "(build it with python -m trackformer_jax.data.bundled)"
    )
  for part in parts:
    for track_id, song_id, split, mixture_files, stem_files in _musdb_layout_candidates(
      part, "chorales"
    ):
      yield f"{part.name}/{track_id}", f"{part.name}/{song_id}", split, mixture_files, stem_files


def parse_spec(spec: str) -> tuple[str, Path | None]:
  """``"musdb:/data/x" -> ("musdb", Path("/data/x"))``; raises DataError if malformed."""
  kind, _, path = spec.partition(":")
  kinds = ("bundled", "chorales", "musdb", "moisesdb", "moisesdb4", "folder", "tfds")
  if kind not in kinds:
    raise DataError(f"data spec {spec!r}: unknown kind {kind!r}; expected one of {kinds}")
  if not path:
    if kind not in ("bundled", "chorales"):
      raise DataError(f"data spec {spec!r}: {kind} needs a path, e.g. {kind}:/data/{kind}")
    return kind, None
  if kind == "tfds":
    # May be a URL such as gs://bucket/dir, which pathlib would mangle; epath (a tfds
    # dependency) is a pathlib-like Path for any filesystem tf.io.gfile reaches.
    from etils import epath

    return kind, epath.Path(os.path.expanduser(path))
  return kind, Path(os.path.expanduser(path))


def open_source(spec: str, *, sample_rate_hz: int, channels: int, strict: bool = False) -> Source:
  """Parses a data spec, lists its tracks and checks their headers.

  A bad track is skipped with a warning (``Source.skipped``) unless ``strict``, where it
  raises DataError; ``strict`` also scans every sample for NaN/inf.
  """
  kind, root = parse_spec(spec)
  if kind == "tfds":
    return tfds_source.open_tfds(spec, str(root), sample_rate_hz=sample_rate_hz, channels=channels)
  if root is None:
    root = _ensure_default_bundled() if kind == "bundled" else _ensure_default_chorales()
  if not root.exists():
    raise DataError(f"{root}: data root does not exist (from data spec {spec!r})")
  if not root.is_dir():
    raise DataError(f"{root}: data root is not a folder (from data spec {spec!r})")
  if kind == "bundled":
    candidates = _bundled_candidates(root)
  elif kind in ("musdb", "chorales"):
    candidates = _musdb_layout_candidates(root, kind)
  elif kind in ("moisesdb", "moisesdb4"):
    candidates = _moisesdb_candidates(root, all_four_only=kind == "moisesdb4")
  else:
    candidates = _folder_candidates(root)
  tracks, skipped = [], []
  for track_id, song_id, split, mixture_files, stem_files in candidates:
    stem_names = STEM_NAMES
    if isinstance(stem_files, tuple):  # (files, names) from a MUSDB-layout listing
      stem_files, stem_names = stem_files
    if split is None:  # rejected while listing: mixture_files holds the problem, if any
      if mixture_files is not None:
        problem = mixture_files
        if strict:
          raise DataError(problem)
        log.warning("Skipping track: %s", problem)
        skipped.append((track_id, problem))
      else:
        log.info("Leaving out %s: %s", track_id, stem_files)
      continue
    try:
      tracks.append(
        _track_from_files(
          track_id,
          song_id,
          split,
          mixture_files,
          stem_files,
          stem_names,
          sample_rate_hz=sample_rate_hz,
          channels=channels,
          strict=strict,
        )
      )
    except (audio.AudioError, DataError) as e:
      if strict:
        raise DataError(f"{e} (track {track_id!r} of {spec!r}; strict data)") from None
      log.warning("Skipping track %s: %s", track_id, e)
      skipped.append((track_id, str(e)))
  if skipped:
    log.warning("%s: skipped %d bad track(s) of %d", spec, len(skipped), len(skipped) + len(tracks))
  if not tracks:
    raise DataError(f"{root}: no usable tracks in {spec!r} ({len(skipped)} skipped)")
  other = [t for t in tracks if t.has_any_stems and not t.has_stems]
  if other:
    log.warning(
      "%s: %d track(s) have stems other than %s (e.g. %s: %s); evaluate scores them against "
      "those, training treats this source as unlabeled",
      spec,
      len(other),
      "/".join(STEM_NAMES),
      other[0].track_id,
      ", ".join(other[0].stem_names),
    )
  if kind in ("moisesdb", "moisesdb4", "folder"):
    tracks = _never_empty_split(tracks)
  if kind == "musdb" and not any(t.split == "validation" for t in tracks):
    tracks = _validation_from_training(spec, tracks)
  return Source(
    spec=spec,
    kind="moisesdb" if kind == "moisesdb4" else kind,
    root=str(root),
    sample_rate_hz=sample_rate_hz,
    channels=channels,
    tracks=tracks,
    skipped=skipped,
    test_is_validation=kind != "musdb",
  )
