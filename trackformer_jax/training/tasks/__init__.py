"""The training tasks, looked up by ``config.task``: each is a module of this package.

A task module supplies what differs between kinds of training; the loop (``training.loop``)
supplies the rest (state, steps, workdir checks, resume, the non-finite guard, evaluation
across hosts, checkpoints and writers). A task module defines:

  TRAIN_FIELDS       the batch fields its train step reads, e.g. ("mom", "mixtures")
  EVAL_FIELDS        the validation batch fields its eval step reads (None: all of them)
  WITH_STEMS         ``input_pipeline.train_batches``'s ``with_stems`` for its stream
  train_batches(config, start_step)              optional: its own stream (e.g. two sources)
  extra_batch_shapes(config) -> {name: shape}    optional: its fields beyond mom and mixtures
  validate_config(config)                        raises ConfigError for its own fields
  create_model(config) -> nn.Module
  training_loss(params, model, batch, rng, config) -> (loss [], parts {name: []})
  eval_step(params, batch, key, *, model, config) -> {name: [B, ...]}, with ``eval_weight``
  summarize_eval(per_example, weights) -> {name: float}
  best_score(scores) -> float                    higher is better (the best checkpoint)
  eval_baselines(config, eval_batches, scores) -> {name: float}, computed once per run
  format_train_log(averaged) -> str              the task's part of the progress line
  format_eval_log(scores) -> str

A new task is a new module plus its name in ``TASK_NAMES``; the loop has no branch on it.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import ml_collections

TASK_NAMES = ("mixit", "mae", "semisupervised")


def get_task(config: ml_collections.ConfigDict | str) -> ModuleType:
  """The task module of ``config.task`` (default "mixit"), or of a task name."""
  name = config if isinstance(config, str) else config.get("task", "mixit")
  if name not in TASK_NAMES:
    raise ValueError(f"task {name!r}: expected one of {TASK_NAMES}")
  # Imported on first use: config checks and --help never pay for the models and losses.
  return importlib.import_module(f"{__name__}.{name}")
