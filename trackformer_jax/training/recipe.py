"""The whole recipe from one command: Audio-MAE pre-training, then MixIT from its encoder.

A MixIT config with ``init_from`` (the pre-training workdir) and ``pretrain`` (the fields
in which the pre-training run differs from it, e.g. its step budget) is trained in two phases:

  1. Audio-MAE (``task = "mae"``) into ``init_from``, unless a finished run is there already
     (then it is reused, as every config naming that workdir reuses it); an unfinished one
     resumes where it stopped.
  2. MixIT into the workdir, its encoder initialised from phase 1's best step; a resumed
     MixIT run starts from its own checkpoints instead, and needs no phase 1.

The pre-training config is the MixIT config itself with ``task = "mae"``, no ``init_from``,
no ``pretrain`` and ``pretrain``'s fields on top: model, data, rate and channels are those of
the separator the encoder goes into. A config without ``pretrain`` trains in one phase, as
``train_and_evaluate`` does.
"""

from __future__ import annotations

import os
import pathlib

import jax
import ml_collections
from absl import logging

from trackformer_jax import checkpoints, interrupts
from trackformer_jax.training import config_checks, loop
from trackformer_jax.training import state as state_lib


def pretraining_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict | None:
  """The Audio-MAE run ``config`` starts from, or None where it has no ``pretrain`` recipe."""
  if not config.get("init_from", "") or config.get("pretrain") is None:
    return None
  fields = config.to_dict()
  del fields["pretrain"]
  pretraining = ml_collections.ConfigDict(fields)
  pretraining.task = "mae"
  pretraining.init_from = ""
  pretraining.update(config.pretrain)  # nested fields update one by one
  return pretraining


def finished_step(workdir: pathlib.Path) -> int | None:
  """The last step of the run in ``workdir`` if it reached its own ``num_train_steps``."""
  steps = checkpoints.saved_steps(workdir)
  if not steps:
    return None
  try:
    target = int(checkpoints.read_config(workdir).num_train_steps)
  except (checkpoints.CheckpointError, AttributeError, TypeError, ValueError):
    return None  # training it again decides, and says what is wrong
  return steps[-1] if steps[-1] >= target else None


def train_recipe(
  config: ml_collections.ConfigDict,
  workdir: str | os.PathLike,
  *,
  stop: interrupts.StopRequest | None = None,
) -> state_lib.TrainState:
  """Trains ``config`` into ``workdir``, pre-training its encoder first where it has a recipe.

  Both phases' configs are checked before either starts, so a mistake in the second is not
  found after the first has run. Returns the MixIT phase's state.
  """
  workdir = pathlib.Path(workdir)
  pretraining = pretraining_config(config)
  if pretraining is None:
    return loop.train_and_evaluate(config, workdir, stop=stop)
  num_devices = jax.device_count()
  config_checks.validate_config(pretraining, num_devices=num_devices)
  config_checks.validate_config(config, num_devices=num_devices)
  pretraining_workdir = pathlib.Path(config.init_from)
  phase = "phase 1/2, Audio-MAE pre-training"
  done = finished_step(pretraining_workdir)
  if done is not None:
    logging.info(
      "%s: finished in %s (step %d); its encoder is reused", phase, pretraining_workdir, done
    )
  elif checkpoints.saved_steps(workdir):
    logging.info("%s: not needed, %s resumes from its own checkpoints", phase, workdir)
  else:
    started = checkpoints.saved_steps(pretraining_workdir)
    logging.info(
      "%s: %s %d steps into %s",
      phase,
      f"resuming at step {started[-1]} of" if started else "training",
      pretraining.num_train_steps,
      pretraining_workdir,
    )
    loop.train_and_evaluate(pretraining, pretraining_workdir, stop=stop)
  logging.info(
    "phase 2/2, MixIT: %d steps into %s, the encoder from %s",
    config.num_train_steps,
    workdir,
    pretraining_workdir,
  )
  return loop.train_and_evaluate(config, workdir, stop=stop)
