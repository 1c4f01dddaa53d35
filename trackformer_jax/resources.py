"""What this process has used of the machine: its peak resident memory.

One reader for training's ``train/peak_memory_gib`` (on the CPU) and the separate
benchmark's per-song figure. Kept free of heavy imports so that a benchmark child measuring
its own peak does not pay for them.
"""

import pathlib
import resource
import sys


def peak_rss_bytes() -> int:
  """This process's peak resident memory, in bytes.

  Linux's ``VmHWM`` belongs to the process's own address space, which ``exec`` replaces;
  ``ru_maxrss`` instead survives ``fork`` + ``exec``, so a child started by a process that had
  grown to gigabytes reports the parent's peak (a separate-benchmark child did: 4.7 GiB for a
  song that needs 0.6). ``ru_maxrss`` is the fallback where ``/proc`` is missing.
  """
  try:
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
      if line.startswith("VmHWM:"):
        return int(line.split()[1]) * 1024  # reported in kB
  except OSError:
    pass
  scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
  return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale)
