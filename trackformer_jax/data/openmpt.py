"""A small ctypes binding to libopenmpt (Debian ``libopenmpt0``): load a tracker module
(.mod, .xm, .it, .s3m and the other formats libopenmpt reads), list its instruments, and
render an excerpt with any set of instruments muted.

No Python binding to libopenmpt exists on PyPI, so this loads the shared library itself.
Only the runtime library is needed; the declarations below follow the installed headers of
libopenmpt 0.6 (``libopenmpt.h`` and ``libopenmpt_ext.h``). Muting goes through the ext
API's "interactive" interface (``openmpt_module_ext_interface_interactive``), whose struct
of function pointers is declared field by field in the header's order.

"Instrument" means what ``set_instrument_mute_status`` means: an instrument of modules that
have instruments (most .xm and .it files), otherwise a sample (.mod, .s3m).

Rendering settings are fixed (``RENDER_SETTINGS``): 44.1 kHz stereo float, windowed-sinc
interpolation, no repeat, default volume ramping and stereo separation, master gain 0 mB.
``openmpt_module_read_float_stereo`` does not dither (dither only applies to the 16-bit
reads) and libopenmpt applies no limiter or AGC to float output, so the mixer is linear in
the instruments up to its fixed-point rounding: the renders of the instruments one by one
sum to the render of the whole (``trackformer_jax.data.modules`` measures it per track;
channel muting always adds up, instrument muting does not in a few .mod/.xm files).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

import numpy as np

SAMPLE_RATE_HZ = 44100
# OPENMPT_MODULE_RENDER_* parameter indices (libopenmpt.h) and the values used.
_RENDER_MASTERGAIN_MILLIBEL = 1
_RENDER_STEREOSEPARATION_PERCENT = 2
_RENDER_INTERPOLATIONFILTER_LENGTH = 3
_RENDER_VOLUMERAMPING_STRENGTH = 4
RENDER_SETTINGS = {
  "mastergain_millibel": 0,
  "stereoseparation_percent": 100,
  "interpolationfilter_length": 8,
  "volumeramping_strength": -1,
  "repeat_count": 0,
  "seek.sync_samples": 1,
  "play.at_end": "stop",
}
_BLOCK_FRAMES = 8192
# OPENMPT_MODULE_COMMAND_* cell indices (libopenmpt.h).
_COMMAND_NOTE = 0
_COMMAND_INSTRUMENT = 1


class OpenMPTError(RuntimeError):
  """libopenmpt is missing, or refused a module."""


class _Interactive(ctypes.Structure):
  """``openmpt_module_ext_interface_interactive`` (libopenmpt_ext.h), fields in order."""


_MOD_EXT = ctypes.c_void_p
_Interactive._fields_ = [
  ("set_current_speed", ctypes.CFUNCTYPE(ctypes.c_int, _MOD_EXT, ctypes.c_int32)),
  ("set_current_tempo", ctypes.CFUNCTYPE(ctypes.c_int, _MOD_EXT, ctypes.c_int32)),
  ("set_tempo_factor", ctypes.CFUNCTYPE(ctypes.c_int, _MOD_EXT, ctypes.c_double)),
  ("get_tempo_factor", ctypes.CFUNCTYPE(ctypes.c_double, _MOD_EXT)),
  ("set_pitch_factor", ctypes.CFUNCTYPE(ctypes.c_int, _MOD_EXT, ctypes.c_double)),
  ("get_pitch_factor", ctypes.CFUNCTYPE(ctypes.c_double, _MOD_EXT)),
  ("set_global_volume", ctypes.CFUNCTYPE(ctypes.c_int, _MOD_EXT, ctypes.c_double)),
  ("get_global_volume", ctypes.CFUNCTYPE(ctypes.c_double, _MOD_EXT)),
  (
    "set_channel_volume",
    ctypes.CFUNCTYPE(ctypes.c_int, _MOD_EXT, ctypes.c_int32, ctypes.c_double),
  ),
  ("get_channel_volume", ctypes.CFUNCTYPE(ctypes.c_double, _MOD_EXT, ctypes.c_int32)),
  (
    "set_channel_mute_status",
    ctypes.CFUNCTYPE(ctypes.c_int, _MOD_EXT, ctypes.c_int32, ctypes.c_int),
  ),
  ("get_channel_mute_status", ctypes.CFUNCTYPE(ctypes.c_int, _MOD_EXT, ctypes.c_int32)),
  (
    "set_instrument_mute_status",
    ctypes.CFUNCTYPE(ctypes.c_int, _MOD_EXT, ctypes.c_int32, ctypes.c_int),
  ),
  ("get_instrument_mute_status", ctypes.CFUNCTYPE(ctypes.c_int, _MOD_EXT, ctypes.c_int32)),
  (
    "play_note",
    ctypes.CFUNCTYPE(
      ctypes.c_int32, _MOD_EXT, ctypes.c_int32, ctypes.c_int32, ctypes.c_double, ctypes.c_double
    ),
  ),
  ("stop_note", ctypes.CFUNCTYPE(ctypes.c_int, _MOD_EXT, ctypes.c_int32)),
]


@functools.cache
def library():
  """The loaded libopenmpt (once per process); OpenMPTError with the package if missing."""
  name = ctypes.util.find_library("openmpt") or "libopenmpt.so.0"
  try:
    lib = ctypes.CDLL(name)
  except OSError as e:
    raise OpenMPTError(f"libopenmpt is not installed (Debian package libopenmpt0): {e}") from None
  p, i32, dbl, size = ctypes.c_void_p, ctypes.c_int32, ctypes.c_double, ctypes.c_size_t
  sigs = {
    "openmpt_get_library_version": (ctypes.c_uint32, []),
    "openmpt_module_ext_create_from_memory": (
      p,
      [p, size, p, p, p, p, ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_char_p), p],
    ),
    "openmpt_module_ext_destroy": (None, [p]),
    "openmpt_module_ext_get_module": (p, [p]),
    "openmpt_module_ext_get_interface": (ctypes.c_int, [p, ctypes.c_char_p, p, size]),
    "openmpt_error_string": (p, [ctypes.c_int]),
    "openmpt_free_string": (None, [p]),
    "openmpt_module_set_repeat_count": (ctypes.c_int, [p, i32]),
    "openmpt_module_set_render_param": (ctypes.c_int, [p, ctypes.c_int, i32]),
    "openmpt_module_ctl_set_text": (ctypes.c_int, [p, ctypes.c_char_p, ctypes.c_char_p]),
    "openmpt_module_get_duration_seconds": (dbl, [p]),
    "openmpt_module_set_position_seconds": (dbl, [p, dbl]),
    "openmpt_module_read_float_stereo": (
      size,
      [p, i32, size, ctypes.POINTER(ctypes.c_float), ctypes.POINTER(ctypes.c_float)],
    ),
    "openmpt_module_get_num_channels": (i32, [p]),
    "openmpt_module_get_num_instruments": (i32, [p]),
    "openmpt_module_get_num_samples": (i32, [p]),
    "openmpt_module_get_instrument_name": (p, [p, i32]),
    "openmpt_module_get_sample_name": (p, [p, i32]),
    "openmpt_module_get_metadata": (p, [p, ctypes.c_char_p]),
    "openmpt_module_get_num_orders": (i32, [p]),
    "openmpt_module_get_order_pattern": (i32, [p, i32]),
    "openmpt_module_get_pattern_num_rows": (i32, [p, i32]),
    "openmpt_module_get_pattern_row_channel_command": (
      ctypes.c_uint8,
      [p, i32, i32, i32, ctypes.c_int],
    ),
  }
  for fn, (restype, argtypes) in sigs.items():
    f = getattr(lib, fn)
    f.restype, f.argtypes = restype, argtypes
  return lib


def version() -> str:
  """libopenmpt's version, e.g. ``0.6.9``."""
  v = library().openmpt_get_library_version()
  return f"{v >> 24}.{(v >> 16) & 0xFF}.{v & 0xFFFF}"


def _take_string(ptr) -> str:
  """Copies and frees a string libopenmpt returned."""
  if not ptr:
    return ""
  text = ctypes.cast(ptr, ctypes.c_char_p).value.decode("latin-1")
  library().openmpt_free_string(ptr)
  return text


class Module:
  """One loaded module: ``with Module(data, name) as m: m.render(0.0, 30.0, mute={2})``."""

  def __init__(self, data: bytes, name: str = "<module>"):
    self.name = name
    self._data = bytes(data)
    self._ext = self._open()
    lib = library()
    mod = lib.openmpt_module_ext_get_module(self._ext)
    self.channels = int(lib.openmpt_module_get_num_channels(mod))
    self.num_instruments = int(lib.openmpt_module_get_num_instruments(mod))
    self.num_samples = int(lib.openmpt_module_get_num_samples(mod))
    self.duration_seconds = float(lib.openmpt_module_get_duration_seconds(mod))
    self.type = _take_string(lib.openmpt_module_get_metadata(mod, b"type"))
    self.title = _take_string(lib.openmpt_module_get_metadata(mod, b"title")).strip()
    self.sample_names = [
      _take_string(lib.openmpt_module_get_sample_name(mod, i)).strip()
      for i in range(self.num_samples)
    ]
    self.instrument_names = [
      _take_string(lib.openmpt_module_get_instrument_name(mod, i)).strip()
      for i in range(self.num_instruments)
    ]

  @property
  def uses_instruments(self) -> bool:
    """True when muting works on instruments, False when on samples."""
    return self.num_instruments > 0

  @property
  def num_mutable(self) -> int:
    """How many instruments (or samples, without instruments) can be muted."""
    return self.num_instruments or self.num_samples

  def notes_played(self) -> list[dict[int, int]]:
    """Per instrument (see ``num_mutable``), how often each note (1..120) is struck in the
    patterns the order list plays; a note without an instrument number counts for the
    channel's last instrument in that pattern."""
    lib = library()
    mod = lib.openmpt_module_ext_get_module(self._ext)
    counts: list[dict[int, int]] = [{} for _ in range(self.num_mutable)]
    patterns = {
      lib.openmpt_module_get_order_pattern(mod, o)
      for o in range(lib.openmpt_module_get_num_orders(mod))
    }
    cell = lib.openmpt_module_get_pattern_row_channel_command
    for pattern in sorted(patterns):
      rows = lib.openmpt_module_get_pattern_num_rows(mod, pattern)
      for channel in range(self.channels):
        last = 0
        for row in range(rows):
          note = cell(mod, pattern, row, channel, _COMMAND_NOTE)
          instrument = cell(mod, pattern, row, channel, _COMMAND_INSTRUMENT)
          last = instrument or last
          if 1 <= note <= 120 and 1 <= last <= self.num_mutable:
            counts[last - 1][note] = counts[last - 1].get(note, 0) + 1
    return counts

  def _open(self):
    lib = library()
    error = ctypes.c_int(0)
    message = ctypes.c_char_p()
    buf = ctypes.create_string_buffer(self._data, len(self._data))
    ext = lib.openmpt_module_ext_create_from_memory(
      buf, len(self._data), None, None, None, None, ctypes.byref(error), ctypes.byref(message), None
    )
    if not ext:
      why = message.value.decode("latin-1", "replace") if message.value else ""
      if not why:
        why = _take_string(lib.openmpt_error_string(error.value)) or f"error {error.value}"
      raise OpenMPTError(f"{self.name}: libopenmpt cannot load this module: {why}")
    mod = lib.openmpt_module_ext_get_module(ext)
    lib.openmpt_module_set_repeat_count(mod, RENDER_SETTINGS["repeat_count"])
    for index, key in (
      (_RENDER_MASTERGAIN_MILLIBEL, "mastergain_millibel"),
      (_RENDER_STEREOSEPARATION_PERCENT, "stereoseparation_percent"),
      (_RENDER_INTERPOLATIONFILTER_LENGTH, "interpolationfilter_length"),
      (_RENDER_VOLUMERAMPING_STRENGTH, "volumeramping_strength"),
    ):
      lib.openmpt_module_set_render_param(mod, index, RENDER_SETTINGS[key])
    for key in ("seek.sync_samples", "play.at_end"):
      lib.openmpt_module_ctl_set_text(mod, key.encode(), str(RENDER_SETTINGS[key]).encode())
    return ext

  def render(
    self, start_s: float, seconds: float, mute=(), solo: int | None = None, mute_channels=()
  ) -> np.ndarray:
    """Renders ``seconds`` from ``start_s`` as float32 ``[2, frames]`` (shorter at the end).

    ``mute`` lists instruments (0-based, see ``num_mutable``) to silence; ``solo`` mutes all
    but one; ``mute_channels`` lists pattern channels to silence. Each render opens the
    module afresh, so renders never share playback state.
    """
    lib = library()
    ext = self._open()
    try:
      mod = lib.openmpt_module_ext_get_module(ext)
      muted = set(mute)
      if solo is not None:
        muted |= set(range(self.num_mutable)) - {solo}
      if muted or mute_channels:
        iface = _Interactive()
        ok = lib.openmpt_module_ext_get_interface(
          ext, b"interactive", ctypes.byref(iface), ctypes.sizeof(iface)
        )
        if not ok:
          raise OpenMPTError(f"{self.name}: libopenmpt has no interactive interface")
        for i in sorted(muted):
          iface.set_instrument_mute_status(ext, i, 1)
        for c in sorted(set(mute_channels)):
          iface.set_channel_mute_status(ext, c, 1)
      if start_s > 0:
        lib.openmpt_module_set_position_seconds(mod, float(start_s))
      frames = int(round(seconds * SAMPLE_RATE_HZ))
      out = np.zeros((2, frames), np.float32)
      done = 0
      while done < frames:
        n = min(_BLOCK_FRAMES, frames - done)
        left = out[0, done:].ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        right = out[1, done:].ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        got = lib.openmpt_module_read_float_stereo(mod, SAMPLE_RATE_HZ, n, left, right)
        done += got
        if got < n:
          break
      return out[:, :done]
    finally:
      lib.openmpt_module_ext_destroy(ext)

  def close(self) -> None:
    if self._ext:
      library().openmpt_module_ext_destroy(self._ext)
      self._ext = None

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()

  def __del__(self):
    try:
      self.close()
    except Exception:
      pass
