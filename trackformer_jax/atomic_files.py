"""Files written whole or not at all: a temporary name in the same folder, then ``os.replace``.

The one place the project does this for single files (JSON, text, audio, figures); a reader
never sees a half-written file, and a failure leaves no temporary file behind. What is
put in place has the mode a plain ``open`` or ``mkdir`` would give it (the umask's), not
the owner-only mode of ``tempfile``'s temporary names, so other users and services can read
results as they read the rest of the folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, prefix: str | None = None) -> Iterator[str]:
  """Yields a temporary path beside ``path`` (same suffix) to write; on success it replaces
  ``path``, on any exception it is removed. The folder must exist."""
  path = Path(path)
  fd, tmp = tempfile.mkstemp(
    prefix=f".{path.name}." if prefix is None else prefix, suffix=path.suffix or ".tmp",
    dir=path.parent,
  )  # fmt: skip
  os.close(fd)
  try:
    yield tmp
    follow_umask(tmp)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
  """Writes ``text`` to ``path`` whole or not at all."""
  with atomic_path(path) as tmp, open(tmp, "w") as f:
    f.write(text)


def write_json_atomic(path: str | os.PathLike, obj: Any, *, indent: int = 2, end: str = "\n"):
  """Writes ``obj`` as JSON (``indent``, then ``end``) to ``path`` whole or not at all."""
  write_text_atomic(path, json.dumps(obj, indent=indent) + end)


def current_umask() -> int:
  """This process's umask, read without changing it: ``os.umask`` can only read it by
  setting it, and another thread creating a file meanwhile would get the wrong mode."""
  try:
    with open("/proc/self/status") as status:
      for line in status:
        if line.startswith("Umask:"):
          return int(line.split()[1], 8)
  except OSError:
    pass
  mask = os.umask(0o022)
  os.umask(mask)
  return mask


def follow_umask(path: str | os.PathLike, *, folder: bool = False) -> None:
  """Gives ``path`` (a ``tempfile`` name: mode 0600, or 0700 for a folder) the mode that
  ``open`` (0666) or ``mkdir`` (0777) would have given it under the umask."""
  os.chmod(path, (0o777 if folder else 0o666) & ~current_umask())
