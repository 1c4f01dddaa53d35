"""Files written whole or not at all: a temporary name in the same folder, then ``os.replace``.

The one place the project does this for single files (JSON, text, audio, figures); a reader
never sees a half-written file, and a failure leaves no temporary file behind.
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
