"""What every rendered corpus shares: FluidSynth synthesis and whole-or-nothing track writes.

A rendered track is a folder in the MUSDB18-HQ layout, ``mixture.wav`` plus one WAV per
stem, at 44.1 kHz stereo PCM_16, and a ``meta.json`` written last that marks it finished.
The stems are quantised to 16 bits first and the mixture is their integer sum, so
``mixture == sum(stems)`` holds exactly after reading back as float32.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from trackformer_jax import audio
from trackformer_jax.atomic_files import write_json_atomic
from trackformer_jax.data.tracks import STEM_NAMES

SAMPLE_RATE_HZ = 44100
_FADE_SECONDS = 0.05
# The Debian package that installs each SoundFont this project names (launch/setup.sh).
SOUNDFONT_PACKAGES = {
  "FluidR3_GM.sf2": "fluid-soundfont-gm",
  "MuseScore_General_Lite.sf3": "musescore-general-soundfont-small",
  "sf_GMbank.sf2": "csound-soundfont",
  "TimGM6mb.sf2": "timgm6mb-soundfont",
  "Black_Pearl_4_LV2.sf2": "avldrums.lv2-soundfont",
  "Red_Zeppelin_4_LV2.sf2": "avldrums.lv2-soundfont",
}


def synthesise(pretty_midi, instruments, soundfont: str, workdir: str, name: str, frames: int):
  """Renders pretty_midi instruments with the fluidsynth CLI -> ``float64 [2, frames]``.

  ``workdir`` holds the intermediate ``<name>.mid`` and ``<name>.wav``.
  """
  midi = pretty_midi.PrettyMIDI(initial_tempo=120.0)
  midi.instruments.extend(instruments)
  mid_path = os.path.join(workdir, name + ".mid")
  wav_path = os.path.join(workdir, name + ".wav")
  midi.write(mid_path)
  if not any(i.notes for i in instruments):
    return np.zeros((2, frames))
  command = ["fluidsynth", "-ni", "-q", "-g", "0.5", "-r", str(SAMPLE_RATE_HZ)]
  command += ["-O", "float", "-T", "wav", "-F", wav_path, soundfont, mid_path]
  result = subprocess.run(command, capture_output=True, text=True)
  if result.returncode != 0 or not os.path.exists(wav_path):
    raise RuntimeError(f"fluidsynth failed on {mid_path}: {result.stderr.strip()[-500:]}")
  rendered = audio.read_audio(wav_path).astype(np.float64)
  rendered = audio.convert_channels(rendered, 2, path=wav_path)[:, :frames]
  return np.pad(rendered, ((0, 0), (0, frames - rendered.shape[1])))


def write_json_whole(path: Path, obj) -> None:
  """Writes the corpus's JSON (indent 1, no final newline) whole or not at all."""
  write_json_atomic(path, obj, indent=1, end="")


def finished_track(out: Path, index: int) -> str | None:
  """The folder of track ``index`` if it is finished (its meta.json, written last, exists)."""
  for done in sorted(out.glob(f"*/{index:04d}-*/meta.json")):
    return str(done.parent)
  return None


def write_track(
  track_dir: Path, stems: np.ndarray, peak: float, meta: dict, names=STEM_NAMES
) -> None:
  """Writes one track whose mixture is exactly the sum of its stems.

  Args:
    track_dir: the track's folder (created).
    stems: ``float [K, 2, T]``, one per name in ``names``, at ``SAMPLE_RATE_HZ``.
    peak: the mixture's peak after scaling, in (0, 1): nothing clips.
    meta: written last as ``meta.json``, the finished-marker.
  """
  stems = np.array(stems, np.float64)
  # A short fade-out, so the cut at the end does not click.
  fade = min(stems.shape[-1], int(_FADE_SECONDS * SAMPLE_RATE_HZ))
  stems[..., stems.shape[-1] - fade :] *= np.linspace(1.0, 0.0, fade)
  loudest = np.abs(stems.sum(0)).max()
  scale = peak / loudest if loudest > 0 else 1.0
  # Quantise each stem, then sum the integers: the mixture equals the stems' sum exactly.
  stems_int = np.clip(np.round(stems * scale * 32768).astype(np.int32), -32767, 32767)
  mixture_int = stems_int.sum(0)
  if np.abs(mixture_int).max() > 32767:
    raise RuntimeError(f"{track_dir}: the mixture would clip")
  for name, stem in zip(names, stems_int):
    audio.write_audio(track_dir / f"{name}.wav", stem.astype(np.int16), SAMPLE_RATE_HZ)
  audio.write_audio(track_dir / "mixture.wav", mixture_int.astype(np.int16), SAMPLE_RATE_HZ)
  write_json_whole(track_dir / "meta.json", meta)


def check_soundfonts(soundfont) -> tuple[str, ...]:
  """One SoundFont path or a list of them -> a tuple; refuses missing files and a missing
  ``fluidsynth`` program by name (with the Debian package to install)."""
  if shutil.which("fluidsynth") is None:
    raise RuntimeError("the `fluidsynth` program is not installed (Debian package fluidsynth)")
  fonts = (
    tuple(str(f) for f in soundfont) if isinstance(soundfont, list | tuple) else (str(soundfont),)
  )
  if not fonts:
    raise ValueError("need at least one SoundFont")
  for font in fonts:
    if not os.path.isfile(font):
      package = SOUNDFONT_PACKAGES.get(os.path.basename(font))
      hint = f" (Debian package {package})" if package else ""
      raise FileNotFoundError(f"{font}: SoundFont not found{hint}")
  return fonts


def render_all(work, tracks: int, out_dir, *, jobs: int, progress: bool) -> list[str]:
  """Calls ``work(index)`` for ``index in range(tracks)``, in ``jobs`` processes, and returns
  the folders it gave (None: a track left out) in index order."""
  from tqdm import tqdm

  bar = tqdm(total=tracks, desc=f"rendering {out_dir}", unit="track", disable=not progress)
  folders = {}
  pending = [i for i in range(tracks) if not finished_track(Path(out_dir), i)]
  if jobs <= 1 or len(pending) <= 1:
    for index in range(tracks):
      folders[index] = work(index)
      bar.update()
  else:
    # fork would copy music21's caches; spawn keeps workers clean and the result identical.
    with multiprocessing.get_context("spawn").Pool(jobs) as pool:
      for index, folder in zip(range(tracks), pool.imap(work, range(tracks))):
        folders[index] = folder
        bar.update()
  bar.close()
  return [folders[i] for i in range(tracks) if folders[i] is not None]


def corpus_main(
  argv,
  *,
  prog: str,
  description: str,
  render,
  tracks: int,
  seconds: float,
  fonts,
  drum_kits: bool = False,
) -> int:
  """The command line of a FluidSynth corpus renderer: parses ``argv``, calls
  ``render(out, tracks, seconds, seed, jobs, soundfonts, only_split=)`` (``fonts``: the
  default SoundFonts; with ``drum_kits``, a ``--drum-kit`` option and ``drum_kits=``, none by
  default), prints one line (an error, or what was rendered) and returns the exit status."""
  parser = argparse.ArgumentParser(prog=prog, description=description)
  parser.add_argument("--out", required=True, help="output folder")
  parser.add_argument("--tracks", type=int, default=tracks, help=f"how many (default {tracks})")
  parser.add_argument(
    "--seconds", type=float, default=seconds, help=f"length of each track (default {seconds})"
  )
  parser.add_argument(
    "--soundfont",
    action="append",
    help="a General MIDI .sf2 / .sf3; repeat it to draw from several "
    f"(default: {', '.join(fonts)})",
  )
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("-j", "--jobs", type=int, default=os.cpu_count() or 1)
  parser.add_argument(
    "--only-split",
    choices=("train", "test"),
    help="render only the tracks whose song falls in this split (e.g. a held-out test set)",
  )
  if drum_kits:
    parser.add_argument(
      "--drum-kit",
      action="append",
      default=[],
      help="a SoundFont of one acoustic drum kit (e.g. avldrums.lv2-soundfont's); repeat it to "
      "draw from several; half the acoustic drum parts are played on one",
    )
  args = parser.parse_args(argv)
  extra = {"drum_kits": tuple(args.drum_kit)} if drum_kits else {}
  try:
    folders = render(
      args.out,
      args.tracks,
      args.seconds,
      args.seed,
      args.jobs,
      args.soundfont or fonts,
      only_split=args.only_split,
      **extra,
    )
  except (RuntimeError, FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(f"{len(folders)} tracks, {len(folders) * args.seconds / 3600:.2f} h of audio in {args.out}")
  return 0
