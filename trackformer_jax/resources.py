"""What this process has used of the machine: its peak resident and device memory.

One reader each for training's ``train/peak_memory_gib`` and the benchmarks (the separate
suite's per-song RSS, the speed suite's device peak). Kept free of heavy imports (jax is
imported only when the device is asked about) so that a benchmark child measuring its own
RSS does not pay for them.
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


def device_peak_bytes() -> int | None:
  """The first local device's peak allocation so far, where the runtime tracks it (GPU, TPU;
  None on the CPU)."""
  import jax

  stats = jax.local_devices()[0].memory_stats() or {}
  return int(stats["peak_bytes_in_use"]) if "peak_bytes_in_use" in stats else None
