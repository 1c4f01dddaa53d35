"""The errors training reports as one line (``main`` prints them without a traceback)."""


class ConfigError(ValueError):
  """An impossible config value; the message is one line naming the field."""


class WorkdirError(RuntimeError):
  """The workdir cannot be used (not writable, or another training holds it)."""


class NonFiniteError(RuntimeError):
  """Training stopped after a run of steps with a non-finite loss or gradient."""


class TrainingInterrupted(Exception):
  """A stop request (Ctrl-C) was honoured at ``step``; ``saved``: a checkpoint of it is on disk."""

  def __init__(self, step: int, saved: bool, trained: bool = True):
    self.step, self.saved = step, saved
    if saved:
      line = f"interrupted at step {step}; checkpoint saved; rerun the same command to resume"
    elif trained:
      line = (
        f"interrupted at step {step} during a run of skipped steps; the last good checkpoint "
        "is kept; rerun the same command to resume"
      )
    else:
      line = (
        f"interrupted at step {step}, before any training step; nothing to save; rerun the "
        "same command to start"
      )
    super().__init__(line)
