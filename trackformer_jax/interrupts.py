"""Ctrl-C as a request to stop: work ends at its next check, nothing partial is left behind.

A tool installs :func:`graceful` around its work. The first SIGINT (or SIGTERM) only sets an
event, which workers on any thread check between units of work (``raise_if_set``) and
answer by raising :class:`Interrupted`, so their own ``except``/``finally`` clean up and
the tool prints one line. A second signal, for when a unit of work will not end soon (a
compilation, say), removes the registered temporary folders and leaves at once with
``os._exit``: interpreter shutdown with XLA's threads still running would abort with
``terminate called without an active exception`` instead.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import threading
from collections.abc import Iterator

EXIT_STATUS = 130  # 128 + SIGINT, what shells report for a Ctrl-C


class Interrupted(Exception):
  """Raised inside work that noticed the stop request."""


class StopRequest:
  """The stop event, and the temporary folders to remove if the process must leave at once."""

  def __init__(self):
    self.event = threading.Event()
    self._folders: set[str] = set()
    self._lock = threading.Lock()

  def is_set(self) -> bool:
    return self.event.is_set()

  def raise_if_set(self, what: str = "") -> None:
    if self.event.is_set():
      raise Interrupted(what or "interrupted")

  def add_folder(self, path: str | os.PathLike) -> None:
    with self._lock:
      self._folders.add(str(path))

  def discard_folder(self, path: str | os.PathLike) -> None:
    with self._lock:
      self._folders.discard(str(path))

  def remove_folders(self) -> None:
    with self._lock:
      folders = list(self._folders)
    for folder in folders:
      shutil.rmtree(folder, ignore_errors=True)


def leave_quietly_on_signal(line: str, signals=(signal.SIGINT, signal.SIGTERM)) -> None:
  """From now on a signal prints ``line`` (if any) and exits with status 130 at once: for
  the start of a tool, before any work (or a handler) exists, and for its shutdown."""

  def handler(signum, frame):
    if line:
      sys.stderr.write(line + "\n")
      sys.stderr.flush()
    os._exit(EXIT_STATUS)

  for s in signals:
    signal.signal(s, handler)


@contextlib.contextmanager
def graceful(
  stop: StopRequest | None = None, *, signals=(signal.SIGINT, signal.SIGTERM)
) -> Iterator[StopRequest]:
  """Within the block, the first signal sets ``stop``; the second removes its folders and
  exits with status 130 at once. Restores the previous handlers after the block.

  Only the main thread can install handlers; elsewhere the block runs with ``stop`` unset
  by signals (it can still be set directly).
  """
  stop = stop or StopRequest()
  if threading.current_thread() is not threading.main_thread():
    yield stop
    return

  def handler(signum, frame):
    if not stop.event.is_set():
      stop.event.set()
      return
    stop.remove_folders()
    sys.stderr.write("interrupted again: stopped at once; temporary files removed\n")
    sys.stderr.flush()
    os._exit(EXIT_STATUS)

  previous = {s: signal.signal(s, handler) for s in signals}
  try:
    yield stop
  finally:
    for s, old in previous.items():
      signal.signal(s, old)
