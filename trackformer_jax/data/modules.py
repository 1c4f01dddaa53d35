"""Music written by people, with real sampled instruments: tracker modules rendered stem by
stem.

Debian's game data packages ship tracker modules (.mod, .xm, .it, .s3m) composed by people
for the games: drum kits, bass lines, chords and leads played by real sampled instruments.
Each module is rendered with libopenmpt (``trackformer_jax.data.openmpt``, Debian
``libopenmpt0``) once per instrument, every other instrument muted, and each instrument is
assigned to one of the MUSDB stems; a stem is the sum of its instruments' renders. Output
is the MUSDB18-HQ layout, like ``trackformer_jax.data.render``::

  <out>/{train,test}/<package>-<module>-<k>/{mixture,vocals,bass,drums,other}.wav + meta.json

**Excerpts.** ``seconds`` (default 30) from the module's start; a module long enough gets up
to ``max_excerpts`` (default 3) excerpts, spread evenly and not overlapping. A module shorter
than ``seconds`` gives one shorter track, if it lasts at least ``min_seconds``. Rendering is
fixed (``openmpt.RENDER_SETTINGS``): 44.1 kHz stereo float, 8-tap sinc interpolation, no
repeat. A 10 ms fade-in (excerpts not at the start) and a 50 ms fade-out keep the cuts from
clicking; they are applied to every stem alike.

**Exact sums.** The stems are quantised to 16 bits and the mixture is their integer sum
(``multitrack.write_track``), so ``mixture == vocals + bass + drums + other`` holds exactly
after reading back; one scale puts the mixture's peak at 0.9 full scale, so nothing clips.
libopenmpt's float mixer is linear in its voices (no dither on float output, no limiter,
master gain 0 mB; channel muting always adds up), so the instruments' renders sum to the
render of the whole module to within its fixed-point rounding, about 1e-6 (SNR ~120 dB).
``meta.json`` records that check per track (``sum_check``: max abs error and SNR of the
float sum against the full render). Two exceptions, both measured on the default packages:
IT instruments with random volume/pan swing render differently on every load (libopenmpt
seeds its generator per load and has no setting for it), so they are left out of the check
(``random_instruments_left_out``) and such a track is not bit-reproducible; and in a few
.mod/.xm files instrument muting does not add up (stems that miss sound heard in the
whole, e.g. where samples are swapped under a playing note): such an excerpt, below
``MIN_SUM_SNR_DB`` (60 dB), is not written, and ``<out>/left_out/`` says why.

**Stems.** Each instrument (a sample, for modules without instruments) goes to one stem by
its name, or by its sound where the name says nothing (``trackformer_jax.data.instruments``
has the rules); the assignment is per module (the same for all its excerpts) and
``meta.json`` records each instrument's stem, the reason, and the measured features.
``vocals`` comes from names only, so it is often silent.

**Splits.** A module goes to ``test`` when the stable hash of its file name falls in the top
20 % (``render.split_of_song``), so no module is in both splits; ``meta.json``'s ``song`` is
``<package>/<file>`` for all its excerpts. ``meta.json`` is written last and marks a
finished track: rerunning skips finished tracks. Modules from the packages reserved for
evaluation (``data.reserved``) are refused.

Command line::

  python -m trackformer_jax.data.modules --out data/modules            # the packages below
  python -m trackformer_jax.data.modules --out data/mine --from ~/mods --seconds 20
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np

from trackformer_jax.data import multitrack, openmpt, render
from trackformer_jax.data.instruments import (
  SILENT_PEAK,
  assign_stem,
  merge_features,
  sound_features,
)
from trackformer_jax.data.reserved import is_reserved, packages_of

SAMPLE_RATE_HZ = openmpt.SAMPLE_RATE_HZ
STEM_NAMES = multitrack.STEM_NAMES
EXTENSIONS = (".mod", ".xm", ".it", ".s3m")
DEFAULT_SECONDS = 30.0
DEFAULT_MAX_EXCERPTS = 3
DEFAULT_MIN_SECONDS = 8.0
PEAK = 0.9
# An excerpt whose instruments rendered one by one do not add up to the whole (libopenmpt's
# instrument muting does not hold for a few .mod/.xm files, e.g. ones that swap samples
# under a playing note) is not written: its stems would not be the module's parts.
MIN_SUM_SNR_DB = 60.0
# Where the Debian game data packages this corpus uses keep their modules (launch/setup.sh
# installs them).
DEFAULT_DIRS = {
  "/usr/share/games/ironseed/sound": "ironseed-data",
  "/usr/share/games/pingus/data/music": "pingus-data",
  "/usr/share/games/heroes/mod": "heroes-sound-tracks",
  "/usr/share/games/tecnoballz/musics": "tecnoballz-data",
  "/usr/share/games/pekka-kana-2/data/music": "pekka-kana-2-data",
  "/usr/share/games/freedroid/sound": "freedroid-data",
  "/usr/share/games/biniax2/music": "biniax2-data",
  "/usr/share/games/bomberclone/music": "bomberclone-data",
}


class ModuleError(RuntimeError):
  """A module that cannot be rendered, or no modules at all."""


def _rounded(v):
  """JSON-safe: 4 decimals, NaN as None."""
  if isinstance(v, float):
    return round(v, 4) if v == v else None
  return v


def excerpt_starts(duration_s: float, seconds: float, max_excerpts: int) -> list[float]:
  """Start times (s) of up to ``max_excerpts`` non-overlapping excerpts, evenly spread."""
  count = max(1, min(max_excerpts, int(duration_s // seconds)))
  if count == 1:
    return [0.0]
  step = (duration_s - seconds) / (count - 1)
  # Rounded down to 0.1 s; libopenmpt then seeks to the row that holds the time, so an
  # excerpt at the end may come out a row shorter than ``seconds``.
  return [float(np.floor(k * step * 10) / 10) for k in range(count)]


def safe_name(text: str) -> str:
  return "".join(c if c.isalnum() or c in ".-_" else "_" for c in text)


def find_modules(dirs) -> list[str]:
  """Module files (by extension, any case) under ``dirs``, sorted."""
  found = []
  for d in dirs:
    for root, _, files in os.walk(d):
      found += [os.path.join(root, f) for f in files if f.lower().endswith(EXTENSIONS)]
  return sorted(found)


def sum_check(parts: np.ndarray, full: np.ndarray) -> dict:
  """Max abs error and SNR (dB) of the instruments' summed renders against the full one."""
  n = min(parts.shape[-1], full.shape[-1])
  err = parts[..., :n].astype(np.float64) - full[..., :n]
  noise = float((err**2).sum())
  power = float((full.astype(np.float64) ** 2).sum())
  snr = 10 * np.log10(power / noise) if noise > 0 else float("inf")
  return dict(
    max_abs_error=float(np.abs(err).max()) if err.size else 0.0,
    snr_db=round(float(snr), 2) if np.isfinite(snr) else None,
    full_peak=float(np.abs(full).max()) if full.size else 0.0,
    frames_full=int(full.shape[-1]),
  )


def render_module(
  path: str,
  out_dir: str | os.PathLike,
  package: str | None = None,
  seconds: float = DEFAULT_SECONDS,
  max_excerpts: int = DEFAULT_MAX_EXCERPTS,
  min_seconds: float = DEFAULT_MIN_SECONDS,
  problems: list[str] | None = None,
) -> list[str]:
  """Renders one module's excerpts into ``out_dir``; returns their track folders.

  An excerpt whose sum check fails (``MIN_SUM_SNR_DB``) is not written; why is appended to
  ``problems`` and kept in ``<out>/left_out/``.

  Finished excerpts (their ``meta.json`` exists) are skipped, and nothing is rendered when
  all are. Raises ModuleError naming the file when libopenmpt refuses it.
  """
  out = Path(out_dir)
  file_name = os.path.basename(path)
  song = f"{package}/{file_name}" if package else file_name
  split = render.split_of_song(file_name)
  base = safe_name(f"{package or 'local'}-{os.path.splitext(file_name)[0]}")
  try:
    data = Path(path).read_bytes()
  except OSError as e:
    raise ModuleError(f"{path}: cannot read: {e.strerror or e}") from None
  try:
    module = openmpt.Module(data, path)
  except openmpt.OpenMPTError as e:
    raise ModuleError(str(e)) from None
  with module:
    if module.duration_seconds < min_seconds:
      return []
    starts = excerpt_starts(module.duration_seconds, seconds, max_excerpts)
    dirs = [out / split / f"{base}-{k}" for k in range(len(starts))]
    # Excerpts left out (see MIN_SUM_SNR_DB) are remembered, so a rerun skips them too.
    left_out = [out / "left_out" / f"{d.name}.json" for d in dirs]
    done = [(d / "meta.json").is_file() or x.is_file() for d, x in zip(dirs, left_out)]
    if all(done):
      for x in left_out:
        if x.is_file() and problems is not None:
          problems.append(json.loads(x.read_text())["problem"])
      return [str(d) for d in dirs if (d / "meta.json").is_file()]
    names = module.instrument_names if module.uses_instruments else module.sample_names
    count = module.num_mutable
    # Pass 1: every instrument alone in every excerpt, for its features.
    notes = module.notes_played()
    feats = [[] for _ in range(count)]
    prints = {}  # (excerpt, instrument) -> digest of its render, to find random ones
    for k, start in enumerate(starts):
      for i in range(count):
        solo = module.render(start, seconds, solo=i)
        prints[k, i] = hashlib.sha1(solo.tobytes()).hexdigest()
        feats[i].append(sound_features(solo, notes[i]))
    merged = [merge_features(f) for f in feats]
    assigned = [assign_stem(names[i], merged[i]) for i in range(count)]
    instruments = [
      dict(
        index=i,
        name=names[i],
        stem=assigned[i][0],
        reason=assigned[i][1],
        silent=merged[i] is None,
        **({k: _rounded(v) for k, v in merged[i].items() if k != "energy"} if merged[i] else {}),
      )
      for i in range(count)
    ]
    written = []
    for k, (start, track_dir) in enumerate(zip(starts, dirs)):
      if (track_dir / "meta.json").is_file() or left_out[k].is_file():
        written += [str(track_dir)] if (track_dir / "meta.json").is_file() else []
        continue
      # Pass 2: the stems as sums of their instruments' renders, checked against the whole.
      full = module.render(start, seconds)
      frames = full.shape[-1]
      if frames < min_seconds * SAMPLE_RATE_HZ or np.abs(full).max() < SILENT_PEAK:
        continue
      stems = np.zeros((len(STEM_NAMES), 2, frames), np.float32)
      randoms = np.zeros((2, frames), np.float32)
      random = []
      for i in range(count):
        if merged[i] is None:
          continue
        solo = module.render(start, seconds, solo=i)
        n = min(frames, solo.shape[-1])
        stems[STEM_NAMES.index(assigned[i][0]), :, :n] += solo[:, :n]
        if hashlib.sha1(solo.tobytes()).hexdigest() != prints[k, i]:
          random.append(i)
          randoms[:, :n] += solo[:, :n]
      if random:
        # Random volume/pan swing or random vibrato: libopenmpt seeds its generator per
        # load, so these differ from render to render. The linearity check leaves them out.
        full = module.render(start, seconds, mute=random)
      check = sum_check(stems.sum(0) - randoms, full)
      check["random_instruments_left_out"] = random
      if check["snr_db"] is not None and check["snr_db"] < MIN_SUM_SNR_DB:
        problem = (
          f"{path}: excerpt {k} at {start} s left out: its instruments rendered one by one "
          f"sum to the whole at only {check['snr_db']:.1f} dB SNR"
        )
        left_out[k].parent.mkdir(parents=True, exist_ok=True)
        multitrack.write_json_whole(left_out[k], dict(problem=problem, sum_check=check))
        if problems is not None:
          problems.append(problem)
        continue
      if start > 0:  # a 10 ms fade-in (multitrack.write_track fades the end out)
        fade = min(frames, int(0.01 * SAMPLE_RATE_HZ))
        stems[..., :fade] *= np.linspace(0.0, 1.0, fade, dtype=np.float32)
      # The scale write_track applies; a stem that rounds to zeros at it is silent.
      scale = PEAK / max(float(np.abs(stems.sum(0)).max()), 1e-12)
      silent = [s for s, st in zip(STEM_NAMES, stems) if np.abs(st).max() * scale * 32768 < 0.5]
      track_dir.mkdir(parents=True, exist_ok=True)
      meta = dict(
        song=song,
        package=package,
        file=file_name,
        path=str(path),
        split=split,
        excerpt=k,
        start_s=start,
        seconds=round(frames / SAMPLE_RATE_HZ, 3),
        module=dict(
          type=module.type,
          title=module.title,
          duration_s=round(module.duration_seconds, 2),
          channels=module.channels,
          muting="instruments" if module.uses_instruments else "samples",
        ),
        instruments=instruments,
        silent_stems=silent,
        peak=PEAK,
        scale=scale,
        sum_check=check,
        libopenmpt=openmpt.version(),
        render_settings=openmpt.RENDER_SETTINGS,
      )
      multitrack.write_track(track_dir, stems, PEAK, meta, STEM_NAMES)
      written.append(str(track_dir))
  return written


def check_settings(out: Path, settings: dict) -> None:
  """One folder, one setting: refuses to add tracks rendered with other settings."""
  path = out / "modules.json"
  if path.is_file():
    old = json.loads(path.read_text())
    if old != settings:
      raise ModuleError(
        f"{out} was rendered with {old}, not {settings}; use another --out or delete it"
      )
  else:
    multitrack.write_json_whole(path, settings)


def render_corpus(
  out_dir: str | os.PathLike,
  sources=None,
  seconds: float = DEFAULT_SECONDS,
  max_excerpts: int = DEFAULT_MAX_EXCERPTS,
  min_seconds: float = DEFAULT_MIN_SECONDS,
  progress: bool = True,
  only_split: str | None = None,
) -> tuple[list[str], list[str]]:
  """Renders every module found under ``sources`` (folders or files; default the Debian
  packages' folders in ``DEFAULT_DIRS``); with ``only_split`` ("train" or "test"), only the
  modules of that split (``only_split="test"``: the held-out modules alone). Returns
  ``(track folders, problems)``: a module libopenmpt refuses is reported in ``problems`` and
  skipped, and so is one from a reserved package and an excerpt whose instruments do not sum
  to the whole. Raises ModuleError when
  libopenmpt is missing or no module is found.
  """
  if seconds <= 0 or max_excerpts < 1:
    raise ValueError(f"need seconds > 0 and max_excerpts >= 1, got {seconds}, {max_excerpts}")
  if only_split not in (None, "train", "test"):
    raise ValueError(f"only_split must be 'train' or 'test', got {only_split!r}")
  try:
    openmpt.library()
  except openmpt.OpenMPTError as e:
    raise ModuleError(str(e)) from None
  sources = list(sources) if sources else [d for d in DEFAULT_DIRS if os.path.isdir(d)]
  files = sorted(
    set(find_modules([s for s in sources if os.path.isdir(s)]))
    | {s for s in sources if os.path.isfile(s)}
  )
  if not files:
    hint = ", ".join(sorted(set(DEFAULT_DIRS.values())))
    raise ModuleError(
      f"no tracker modules ({', '.join(EXTENSIONS)}) found in {', '.join(map(str, sources))}"
      f"{'' if sources else ' (none of the Debian packages is installed: ' + hint + ')'}"
    )
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  check_settings(
    out,
    dict(
      seconds=float(seconds),
      max_excerpts=int(max_excerpts),
      min_seconds=float(min_seconds),
      render_settings=openmpt.RENDER_SETTINGS,
    ),
  )
  owners = packages_of(files)
  from tqdm import tqdm

  folders, problems = [], []
  for path in tqdm(files, desc=f"rendering {out}", unit="module", disable=not progress):
    package = owners.get(path)
    if only_split and render.split_of_song(os.path.basename(path)) != only_split:
      continue
    if is_reserved(package):
      problems.append(f"{path}: from {package}, reserved for evaluation; skipped")
      continue
    try:
      folders += render_module(
        path, out, package, seconds, max_excerpts, min_seconds, problems=problems
      )
    except ModuleError as e:
      problems.append(str(e))
  return folders, problems


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m trackformer_jax.data.modules",
    description="Render tracker modules instrument by instrument (MUSDB18-HQ layout).",
  )
  parser.add_argument("--out", required=True, help="output folder")
  parser.add_argument(
    "--from",
    dest="sources",
    action="append",
    help="a folder (searched recursively) or module file; repeat for several "
    "(default: the Debian packages' folders)",
  )
  parser.add_argument("--seconds", type=float, default=DEFAULT_SECONDS)
  parser.add_argument("--max-excerpts", type=int, default=DEFAULT_MAX_EXCERPTS)
  parser.add_argument("--min-seconds", type=float, default=DEFAULT_MIN_SECONDS)
  parser.add_argument(
    "--only-split", choices=("train", "test"), help="render only the modules of this split"
  )
  args = parser.parse_args(argv)
  try:
    folders, problems = render_corpus(
      args.out,
      args.sources,
      args.seconds,
      args.max_excerpts,
      args.min_seconds,
      only_split=args.only_split,
    )
  except (ModuleError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  for problem in problems:
    print(f"warning: {problem}", file=sys.stderr)
  seconds = sum(json.loads((Path(f) / "meta.json").read_text())["seconds"] for f in folders)
  print(f"{len(folders)} tracks, {seconds / 3600:.2f} h of audio in {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
