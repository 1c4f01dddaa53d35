r"""Trains a separator: ``python -m trackformer_jax.main --config=configs/perf30.py``.

Flags only; the work is ``train.train_recipe``: a config with a ``pretrain`` recipe first
pre-trains its Audio-MAE encoder into ``config.init_from`` (unless a finished run is there),
then trains MixIT from it. Any config field can be overridden, e.g. ``--config.batch_size=8
--config.data=musdb:/data/musdb18hq``. ``--workdir`` defaults to ``runs/<config file stem>``;
the same command restarted resumes whichever phase was interrupted.
"""

import contextlib
import logging as python_logging
import pathlib
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from trackformer_jax import interrupts

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path to a config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Where checkpoints and metrics go (default runs/<config>).")
flags.DEFINE_bool(
  "distributed", False, "Join a multi-host run through jax.distributed.initialize()."
)
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-host only).")
flags.DEFINE_integer("num_processes", None, "Number of processes (multi-host only).")
flags.DEFINE_integer("process_id", None, "This process's index (multi-host only).")
flags.mark_flags_as_required(["config"])


class _QuietCheckpointLogs(python_logging.Filter):
  """Drops orbax's INFO chatter (a dozen lines per save) so progress lines stay readable."""

  def filter(self, record: python_logging.LogRecord) -> bool:
    return record.levelno >= python_logging.WARNING or "/orbax/" not in record.pathname


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if FLAGS.distributed or FLAGS.coordinator_address:
    # Must come before anything touches a device. Unset arguments are auto-detected
    # (SLURM, Cloud TPU, ...); see launch/multihost.sh.
    jax.distributed.initialize(
      coordinator_address=FLAGS.coordinator_address,
      num_processes=FLAGS.num_processes,
      process_id=FLAGS.process_id,
    )
  # Until training can stop at a step boundary, a Ctrl-C has nothing to save.
  interrupts.leave_quietly_on_signal("training: interrupted before it started; nothing saved")
  # Imported after flag parsing so that --help stays fast.
  from trackformer_jax import checkpoints, train
  from trackformer_jax.data import sources
  from trackformer_jax.training.errors import TrainingInterrupted

  logging.get_absl_handler().addFilter(_QuietCheckpointLogs())
  config_path = config_flags.get_config_filename(FLAGS["config"])
  workdir = FLAGS.workdir or str(pathlib.Path("runs") / pathlib.Path(config_path).stem)
  logging.info(
    "JAX process %d/%d, devices: %s", jax.process_index(), jax.process_count(), jax.devices()
  )
  # With several processes one host's Ctrl-C cannot pick a step for all; they keep the
  # quiet exit above.
  single = jax.process_count() == 1
  try:
    with interrupts.graceful() if single else contextlib.nullcontext() as stop:
      train.train_recipe(FLAGS.config, workdir, stop=stop)
  except TrainingInterrupted as stopped:
    print(f"training: {stopped}", file=sys.stderr)
    sys.exit(interrupts.EXIT_STATUS)
  except (
    train.ConfigError,
    train.NonFiniteError,
    train.WorkdirError,
    checkpoints.CheckpointError,
    sources.DataError,
  ) as error:
    # One line naming the problem; a traceback would only bury it.
    print(f"error: {error}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main)
