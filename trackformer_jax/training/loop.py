"""The training loop, one for every task: ``train_and_evaluate(config, workdir)``.

It checks the config and the workdir, builds the task's model, the optimiser and a
``TrainState``; restores the newest checkpoint in ``workdir`` if there is one (and then
continues the same data stream from that step); and loops ``train_step(state, batch, rng)``.
Every ``eval_every_steps`` it scores the validation split; every ``checkpoint_every_steps``
(and at each evaluation, so the best step is always on disk) it saves through
``checkpoints``. What differs between MixIT and Audio-MAE comes from ``tasks``.

Reproducibility: step ``s`` sees batch ``s`` of the input stream and key
``fold_in(state.rng, s)``, and a skipped step still consumes both; so a run restarted from a
checkpoint at step ``s`` performs exactly the computations an uninterrupted run performs after
``s`` (bitwise on the CPU).
"""

from __future__ import annotations

import os
import pathlib
import time
from collections.abc import Iterable, Iterator

import jax
import ml_collections
import numpy as np
from absl import logging
from clu import periodic_actions
from jax.sharding import Mesh

from trackformer_jax import checkpoints, interrupts
from trackformer_jax.training import config_checks, steps, tasks, transfer, writers
from trackformer_jax.training import state as state_lib
from trackformer_jax.training import workdir as workdir_lib
from trackformer_jax.training.errors import NonFiniteError, TrainingInterrupted

# An evaluation that takes longer than this says how far it has got, once per interval.
EVAL_PROGRESS_SECONDS = 10.0


def train_batches(config: ml_collections.ConfigDict, start_step: int) -> Iterator[dict]:
  """The task's training stream from batch ``start_step``: the task's own ``train_batches``
  where it has one (a task that reads two sources), else ``input_pipeline.train_batches``."""
  from trackformer_jax import input_pipeline

  task = tasks.get_task(config)
  if hasattr(task, "train_batches"):
    return task.train_batches(config, start_step)
  return input_pipeline.train_batches(config, start_step=start_step, with_stems=task.WITH_STEMS)


def eval_batches(config: ml_collections.ConfigDict) -> Iterable[dict[str, np.ndarray]]:
  """The validation batches; iterated afresh at each evaluation, never held in memory."""
  # Never held: 64 stem-annotated 30 s examples are gigabytes of host memory.
  from trackformer_jax import input_pipeline

  return input_pipeline.eval_batches(config, split="validation")


def train_and_evaluate(
  config: ml_collections.ConfigDict,
  workdir: str | os.PathLike,
  *,
  stop_after_step: int | None = None,
  stop: interrupts.StopRequest | None = None,
) -> state_lib.TrainState:
  """Trains ``config`` into ``workdir`` (resuming from its newest checkpoint) and returns the state.

  Args:
    config: see ``configs/default.py``; ``config.task`` picks the task.
    workdir: checkpoints, ``config.json``, ``metrics.jsonl`` and TensorBoard files go here.
    stop_after_step: stop (with a checkpoint) once this step is reached, as if the run had
      been interrupted there; the schedule still follows ``config.num_train_steps``.
    stop: checked between steps and evaluation batches; once set, training saves a
      checkpoint of the current step and raises ``TrainingInterrupted``. Only for a single
      process: with several, the hosts would have to agree on the step to stop at.
  """
  workdir = pathlib.Path(workdir)
  mesh = state_lib.create_mesh()
  config_checks.validate_config(config, num_devices=mesh.devices.size)
  workdir_lib.prepare_workdir(workdir)
  lock = workdir_lib.lock_workdir(workdir) if jax.process_index() == 0 else None
  try:
    return _train_holding_lock(config, workdir, mesh, stop_after_step, stop)
  finally:
    # Also on an error before the first step: in a notebook, a lock left to the garbage
    # collector would refuse the corrected retry ("another training is using this workdir").
    if lock is not None:
      lock.close()


def _restore_or_init(config, workdir, abstract_state, model, optimizer, mesh, manager):
  """(state, resumed): the newest checkpoint of the same model, else a fresh state."""
  if manager.all_steps():
    workdir_lib.check_same_model(workdir, config)
  state = checkpoints.restore_latest(manager, abstract_state, state_lib.TrainState)
  if state is not None:
    return state, True
  state = state_lib.init_train_state(config, model, optimizer, mesh)
  if config.get("init_from", ""):
    # Audio-MAE's encoder or a whole separator into the fresh params; Adam's moments start
    # at zero either way.
    params = transfer.initial_params(state.params, config)
    # The average starts from the transferred weights too, not from the random ones.
    ema = None if state.ema_params is None else params
    state = state.replace(params=params, ema_params=ema)
  return state, False


def _train_holding_lock(
  config: ml_collections.ConfigDict,
  workdir: pathlib.Path,
  mesh: Mesh,
  stop_after_step: int | None,
  stop: interrupts.StopRequest | None,
) -> state_lib.TrainState:
  task = tasks.get_task(config)
  host = state_lib.host_value
  logging.info(
    "host %d/%d, %d local of %d devices (%s); task %s; workdir %s",
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
    jax.devices()[0].platform,
    config.get("task", "mixit"),
    workdir,
  )

  model = task.create_model(config)
  optimizer = state_lib.create_optimizer(config)
  abstract_state, _, _ = state_lib.abstract_train_inputs(config, model, optimizer, mesh)
  workdir_lib.check_free_space(workdir, abstract_state, config.keep_checkpoints)
  manager = checkpoints.create_manager(workdir, config.keep_checkpoints)
  state, resumed = _restore_or_init(
    config, workdir, abstract_state, model, optimizer, mesh, manager
  )
  if jax.process_index() == 0:
    checkpoints.write_config(workdir, config)
  start_step = int(host(state.step))
  if resumed and start_step >= config.num_train_steps:
    manager.close()
    logging.info("training: already finished at step %d (%s); nothing to do", start_step, workdir)
    return state
  # Step keys are derived on the host's CPU device: deriving them on the accelerator would
  # queue behind the running step and make the host wait for it.
  base_rng = jax.device_put(host(state.rng), jax.local_devices(backend="cpu")[0])
  writer = writers.create_writer(workdir, start_step if resumed else None)
  if resumed:
    logging.info("resuming at step %d", start_step)
  else:
    num_params = sum(leaf.size for leaf in jax.tree.leaves(state.params))
    logging.info("model %s: %.2fM parameters", config.model.name, num_params / 1e6)

  step_fn = steps.compile_train_step(config, model, optimizer, mesh)
  validation = eval_batches(config)
  _log_split_sizes(config, validation)
  eval_fn = steps.compile_eval_step(config, model, mesh)

  last_step = config.num_train_steps
  if stop_after_step is not None:
    last_step = min(last_step, stop_after_step)

  baselines: dict[str, float] | None = None

  def run_eval(step: int) -> dict[str, float]:
    nonlocal baselines
    progress = _EvalProgress(step, len(validation), stop)
    scores = steps.evaluate(state.eval_params, eval_fn, validation, mesh, config, progress)
    if scores:
      scores["best_score"] = task.best_score(scores)
      if baselines is None:
        # Baselines do not train: computed once, on the same clips.
        baselines = task.eval_baselines(config, validation, scores)
      scores.update(baselines)
      writer.write_scalars(step, {f"eval/{name}": value for name, value in scores.items()})
      logging.info("eval step %d: %s", step, task.format_eval_log(scores))
    return scores

  def stop_here():
    # Called where ``state`` is that of ``step``: between steps or inside an evaluation.
    saved = step in manager.all_steps()
    if not saved and step > start_step and int(host(state.consecutive_nonfinite)) == 0:
      checkpoints.save(manager, state, step)
      saved = True
    raise TrainingInterrupted(step, saved, trained=step > 0)

  accumulated: list[dict[str, jax.Array]] = []
  # Steps/s, the ETA and the share of time in evaluation and checkpoints, every log step:
  # one line ("... steps/s, 75.0% (15/20), ETA: 2m (5m : 10.0% eval, ...)") and a
  # ``steps_per_sec`` row in the metrics.
  progress = periodic_actions.ReportProgress(
    num_train_steps=config.num_train_steps,
    writer=writer,
    every_steps=config.log_every_steps,
    every_secs=None,
  )
  step = start_step
  previous_metrics = None
  try:
    if stop is not None and stop.is_set():
      stop_here()  # while compiling, before the first evaluation
    if not resumed and start_step < last_step:
      # The starting point of the curve, and what training must beat: the untrained control,
      # or the weights a fine-tuning run starts from.
      logging.info(
        "eval step %d: scoring %s on %d batches",
        start_step,
        f"the weights of {config.init_from}"
        if config.get("init_from", "")
        else "the untrained control",
        len(validation),
      )
      with progress.timed("eval"):
        run_eval(start_step)
    batches = train_batches(config, start_step)
    while step < last_step:
      if stop is not None and stop.is_set():
        stop_here()
      batch = next(batches)
      batch = state_lib.to_global({name: batch[name] for name in task.TRAIN_FIELDS}, mesh)
      step_rng = np.asarray(jax.random.fold_in(base_rng, step))
      state, metrics = step_fn(state, batch, step_rng)
      step += 1
      accumulated.append(metrics)
      if step == start_step + 1:
        # Timed from the end of the first step (progress's first call only starts the
        # clock): it includes compilation, which would drag the first steps/s and ETA down.
        jax.block_until_ready(metrics)
      progress(step)
      # Read the previous step's counters, not this one's, so the host never waits on the
      # step it just launched; a run of skipped steps stops at most one step late.
      if previous_metrics is not None:
        consecutive = int(host(previous_metrics["consecutive_nonfinite"]))
        if consecutive >= config.max_consecutive_nonfinite:
          raise NonFiniteError(
            f"stopped at step {step - 1}: {consecutive} consecutive steps had a non-finite "
            f"loss or gradient (config.max_consecutive_nonfinite = "
            f"{config.max_consecutive_nonfinite}); the last good checkpoint in "
            f"{workdir / checkpoints.CHECKPOINT_DIR} is kept"
          )
      previous_metrics = metrics

      is_eval = step % config.eval_every_steps == 0 or step == config.num_train_steps
      is_checkpoint = step % config.checkpoint_every_steps == 0 or step == last_step
      if step % config.log_every_steps == 0 or step == last_step:
        averaged = {
          name: float(np.mean([host(metrics[name]) for metrics in accumulated]))
          for name in accumulated[-1]
        }
        # Counters are states, not rates: report their newest value.
        for name in ("nonfinite_steps", "consecutive_nonfinite"):
          averaged[name] = float(host(accumulated[-1][name]))
        accumulated = []
        scalars = {f"train/{name}": float(value) for name, value in averaged.items()}
        scalars["train/peak_memory_gib"] = writers.peak_memory_bytes() / 2**30
        writer.write_scalars(step, scalars)
        logging.info(
          "step %d/%d | lr %.2e | grad %.3f | %s | skipped %d | peak mem %.2f GiB",
          step,
          config.num_train_steps,
          averaged["learning_rate"],
          averaged["grad_norm"],
          task.format_train_log(averaged),
          int(averaged["nonfinite_steps"]),
          scalars["train/peak_memory_gib"],
        )

      if is_eval or is_checkpoint:
        # Never checkpoint in the middle of a run of skipped steps: the params are those of
        # the last good step anyway, and the stop message promises that checkpoint is kept.
        if int(host(state.consecutive_nonfinite)) == 0:
          with progress.timed("eval"):
            scores = run_eval(step) if is_eval else {}
          checkpoint_metrics = {"best_score": scores["best_score"]} if scores else None
          with progress.timed("checkpoint"):
            checkpoints.save(manager, state, step, checkpoint_metrics)
          # Rows up to a checkpoint must be on disk before a kill can strike: a restart keeps
          # only the rows up to its checkpoint, so buffered ones would be lost for good.
          writer.flush()
  except interrupts.Interrupted:
    stop_here()
  finally:
    manager.wait_until_finished()
    manager.close()
    writer.flush()
    writer.close()
  return state


def _log_split_sizes(config: ml_collections.ConfigDict, validation) -> None:
  """One line: how many tracks each split of ``config.data`` has."""
  source = getattr(validation, "source", None)
  if source is None:
    return
  counts = {name: len(source.split(name)) for name in ("train", "validation", "test")}
  if source.test_is_validation:
    del counts["test"]  # the same tracks as validation
  listed = ", ".join(f"{count} {name}" for name, count in counts.items())
  skipped = f" ({len(source.skipped)} skipped)" if source.skipped else ""
  logging.info("data %s: %s tracks%s", config.data, listed, skipped)


class _EvalProgress:
  """Per evaluation batch: stops on request, and says how far a slow evaluation has got."""

  def __init__(self, step: int, total: int, stop: interrupts.StopRequest | None):
    self.step, self.total, self.stop = step, total, stop
    self.last_line = time.perf_counter()

  def __call__(self, done: int) -> None:
    if self.stop is not None:
      self.stop.raise_if_set("evaluation")
    now = time.perf_counter()
    if done < self.total and now - self.last_line >= EVAL_PROGRESS_SECONDS:
      logging.info("eval step %d: %d/%d batches", self.step, done, self.total)
      self.last_line = now
