"""Music reserved for evaluation (issue 23): what no training corpus may be built from.

The project is judged on music drawn from these packages and SoundFonts, which nobody
working on it has heard; a corpus that trained on them would make that judgement worthless.
Two builders consult this module: ``data.modules`` skips every module a reserved package
ships, and the FluidSynth renderers (``data.songs``, ``data.render``) refuse a reserved
SoundFont for any render that holds a training split (``--only-split test`` renders only
held-out songs, and may use one: that is how such music is made for scoring).

A file is reserved when a reserved Debian package owns it (``dpkg-query -S``, through
symlinks), or, for a copy outside any package, when its name is a reserved SoundFont's.
"""

from __future__ import annotations

import os
import subprocess

RESERVED_PACKAGES = (
  "openttd-openmsx",
  "simutrans-data",
  "freedink-data",
  "planetblupi-music-midi",
  "fretsonfire-songs-",
  "plee-the-bear-data",
  "python3-pyglet",
  "minuet-data",
  "opl3-soundfont",
)
# The reserved SoundFonts by file name (lower case, without extension), for copies that no
# package owns: GeneralUser GS (minuet-data) and the OPL-3 FM bank (opl3-soundfont).
RESERVED_SOUNDFONT_NAMES = ("generaluser", "opl-3", "opl3")


def packages_of(paths: list[str]) -> dict[str, str]:
  """The Debian package owning each path (``dpkg-query -S``); paths of none are absent."""
  owners = {}
  if not paths:
    return owners
  try:
    done = subprocess.run(
      ["dpkg-query", "-S", *[os.path.realpath(p) for p in paths]],
      capture_output=True,
      text=True,
      check=False,
    )
  except OSError:
    return owners
  real = {os.path.realpath(p): p for p in paths}
  for line in done.stdout.splitlines():
    package, _, path = line.partition(": ")
    if path in real and "," not in package:
      owners[real[path]] = package.split(":")[0]
  return owners


def is_reserved(package: str | None) -> bool:
  return bool(package) and any(package.startswith(r) for r in RESERVED_PACKAGES)


def reserved_soundfonts(paths: tuple[str, ...]) -> dict[str, str]:
  """Each of ``paths`` that is reserved -> why (the owning package, or its name)."""
  owners = packages_of(list(paths))
  found = {}
  for path in paths:
    package = owners.get(path)
    stem = os.path.splitext(os.path.basename(os.path.realpath(path)))[0].lower()
    if is_reserved(package):
      found[path] = f"from {package}"
    elif any(stem.startswith(name) for name in RESERVED_SOUNDFONT_NAMES):
      found[path] = "named as a reserved SoundFont"
  return found


def refuse_reserved_soundfonts(paths: tuple[str, ...], only_split: str | None) -> None:
  """Raises ValueError naming each reserved SoundFont of a render that has a train split."""
  if only_split == "test":
    return
  found = reserved_soundfonts(paths)
  if found:
    named = "; ".join(f"{path} ({why})" for path, why in found.items())
    raise ValueError(
      f"{named}: reserved for evaluation, never trained on; a training corpus may not use it "
      "(render a held-out set with --only-split test)"
    )
