"""The errors training reports as one line (``main`` prints them without a traceback)."""


class ConfigError(ValueError):
  """An impossible config value; the message is one line naming the field."""


class WorkdirError(RuntimeError):
  """The workdir cannot be used (not writable, or another training holds it)."""


class NonFiniteError(RuntimeError):
  """Training stopped after a run of steps with a non-finite loss or gradient."""
