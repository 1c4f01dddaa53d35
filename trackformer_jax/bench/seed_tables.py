"""Seed-tables suite: the seed's Tables 1-3 and its auxiliary-loss ablation, reproduced at a
stated (reduced) scale in one run, each cell beside its untrained control. (The seed: the
work this project reproduces; docs/history.md says what is known of it.)

The scale: every width and every depth of both models divided by 4 (Performer: 3 layers of
width 64, 2 heads of 32, 64 random features; Conv-TasNet: N = H = 128, B = Sc = 32, 2 repeats
of 3 blocks), 8 kHz mono, batch 4, AdamW at 1e-3 after a 20-step warm-up (the cosine is
stretched over 10^6 steps, so it is flat within a cell). Every cell trains for the same
wall-clock budget (``--seed-budget``, compilation excluded) and is scored before training (the
control: the same initialisation) and after, on the same fixed evaluation set
(``--seed-eval-examples`` examples of ``--seed-eval-seconds`` from the test split), stems
rebuilt by the best assignment of the model's outputs (the MixIT task's ``eval_step``), whatever
segment length the cell trained on.

* Table 1: stem SI-SNR improvement, Performer vs Conv-TasNet, 3/5/10/30 s segments. A length
  whose *full-size* step exceeds the device budget (32 GiB, the seed's card) in the memory suite
  is flagged ``full_size_oom`` (the seed's 30 s Conv-TasNet); the reduced cell still runs.
* Table 2: time per epoch as a ratio (Conv-TasNet / Performer); an epoch is a fixed number of
  examples, so the ratio is that of examples per second during the Table 1 cells.
* Table 3: Performer at 3 s from scratch (Table 1's cell) vs from an Audio-MAE encoder
  pre-trained for the same budget (``configs/mae_pretrain.py`` at this scale), then trained
  with MixIT for the same budget.
* Aux ablation: Performer at 3 s with (Table 1's cell) and without the diversity and sparsity
  losses; mask overlap (``diversity_loss`` of the masks) and effective mask count reported.
"""

import functools
import math
import pathlib
import tempfile
import time

import jax
import jax.numpy as jnp
import ml_collections

from trackformer_jax import input_pipeline, train
from trackformer_jax.bench.experiments import load_config, reduced_config
from trackformer_jax.bench.measure import compiled_train_step
from trackformer_jax.bench.options import BenchOptions
from trackformer_jax.training import steps as steps_lib
from trackformer_jax.training import transfer as transfer_lib
from trackformer_jax.training.tasks import mixit as mixit_task

SECONDS = (3, 5, 10, 30)
SMOKE_SECONDS = (0.5,)
SMOKE_EVAL_SECONDS = 0.5
PREFIX = {"performer": "perf", "convtasnet": "convtasnet"}
SEED_TABLE2_SPEEDUP_3S = 1.36  # the only number of the seed's tables issue 9 gives
SCORES = ("stem_si_snri_db", "mom_si_snri_db", "mask_overlap", "effective_masks")


def evaluation_config(config: ml_collections.ConfigDict, options: BenchOptions):
  """``config`` at the fixed evaluation length and size."""
  config = ml_collections.ConfigDict(config.to_dict())
  config.segment_seconds = SMOKE_EVAL_SECONDS if options.smoke else options.seed_eval_seconds
  config.num_eval_examples = 4 if options.smoke else options.seed_eval_examples
  return config


_EVAL_STEPS: dict[str, object] = {}


def compiled_eval_step(eval_config: ml_collections.ConfigDict, model):
  """MixIT's ``eval_step`` jitted once per evaluation config (cells of one model share it)."""
  key = eval_config.model.to_json() + f"{eval_config.snr_max_db}{eval_config.silence_threshold_db}"
  if key not in _EVAL_STEPS:
    _EVAL_STEPS[key] = jax.jit(
      functools.partial(mixit_task.eval_step, model=model, config=eval_config)
    )
  return _EVAL_STEPS[key]


def _on_device(batch: dict) -> dict[str, jax.Array]:
  return {name: jnp.asarray(batch[name]) for name in ("mom", "mixtures")}


def train_cell(
  config: ml_collections.ConfigDict,
  options: BenchOptions,
  budget_seconds: float,
  *,
  initial_params_fn=None,
) -> dict:
  """Trains ``config`` for ``budget_seconds`` of wall clock; scores it before and after.

  ``initial_params_fn(params) -> params`` replaces the fresh initialisation (Audio-MAE
  transfer); the control is scored on the initial parameters either way.
  """
  compiled = compiled_train_step(config)
  state = train.init_train_state(config, compiled.model, compiled.optimizer, compiled.mesh)
  if initial_params_fn is not None:
    state = state.replace(params=initial_params_fn(state.params))
  eval_config = evaluation_config(config, options)
  eval_fn = compiled_eval_step(eval_config, compiled.model)
  eval_batches = list(input_pipeline.eval_batches(eval_config, split="test"))
  control = steps_lib.evaluate(state.params, eval_fn, eval_batches, compiled.mesh, eval_config)

  step_fn = compiled.executable
  batches = input_pipeline.train_batches(config, with_stems=False)
  start = time.perf_counter()
  state, metrics = step_fn(state, _on_device(next(batches)), jax.random.fold_in(state.rng, 0))
  jax.block_until_ready(metrics)
  first_step_seconds = time.perf_counter() - start  # compilation: outside the budget
  steps, start = 1, time.perf_counter()
  while time.perf_counter() - start < budget_seconds:
    state, metrics = step_fn(state, _on_device(next(batches)), jax.random.fold_in(state.rng, steps))
    # One step in flight at a time, so the budget is not overrun by queued steps.
    jax.block_until_ready(metrics)
    steps += 1
  train_seconds = time.perf_counter() - start
  trained = steps_lib.evaluate(state.params, eval_fn, eval_batches, compiled.mesh, eval_config)
  record = {
    "model": config.model.name,
    "segment_seconds": float(config.segment_seconds),
    "sample_rate_hz": int(config.sample_rate_hz),
    "batch_size": int(config.batch_size),
    "budget_seconds": float(budget_seconds),
    "train_seconds": train_seconds,
    "first_step_seconds": first_step_seconds,
    "steps": steps,
    # The compiled first step is excluded from the rate as it is from the budget.
    "examples_per_second": (steps - 1) * config.batch_size / train_seconds,
    "final_loss": float(metrics["loss"]),
    "num_eval_examples": int(eval_config.num_eval_examples),
    "eval_segment_seconds": float(eval_config.segment_seconds),
  }
  for name in SCORES:
    record[name] = trained.get(name, math.nan)
    record[f"control_{name}"] = control.get(name, math.nan)
  record["stem_si_snri_gain_db"] = record["stem_si_snri_db"] - record["control_stem_si_snri_db"]
  print(
    f"seed-tables {config.model.name} {config.segment_seconds:g} s: {steps} steps, stem SI-SNRi "
    f"{record['stem_si_snri_db']:.2f} dB (control {record['control_stem_si_snri_db']:.2f})",
    flush=True,
  )
  return record


def full_size_memory(results: dict, model_name: str, seconds: float, budget_gib: float) -> dict:
  """The full-size config's step memory from the memory suite (when it ran), against the budget."""
  name = f"{PREFIX[model_name]}{seconds:g}"
  for record in results.get("memory", []):
    if record["config"] == name:
      return {
        "full_size_peak_gib": record["peak_gib"],
        "full_size_oom": record["peak_gib"] > budget_gib,
      }
  return {"full_size_peak_gib": None, "full_size_oom": None}


def pretrain_encoder(config: ml_collections.ConfigDict, steps: int, workdir: pathlib.Path) -> float:
  """Audio-MAE pre-training of ``config``'s Performer for ``steps`` steps; returns seconds."""
  mae_config = load_config("mae_pretrain")
  for field in ("sample_rate_hz", "channels", "segment_seconds", "batch_size", "learning_rate"):
    mae_config[field] = config[field]
  mae_config.model = ml_collections.ConfigDict(config.model.to_dict())
  mae_config.data = config.data
  mae_config.warmup_steps = config.warmup_steps
  mae_config.num_train_steps = steps
  mae_config.eval_every_steps = steps
  mae_config.checkpoint_every_steps = steps
  mae_config.log_every_steps = max(steps // 4, 1)
  mae_config.num_eval_examples = 4
  start = time.perf_counter()
  train.train_and_evaluate(mae_config, workdir)  # task mae
  return time.perf_counter() - start


def mae_cells(options: BenchOptions, scratch: dict, budget: float, data: str) -> list[dict]:
  """Table 3: the scratch cell (Table 1's) and one initialised from an Audio-MAE encoder.

  Pre-training gets as many steps as the scratch cell took in its budget (the MAE step
  costs about as much as a MixIT step), so it too takes about one budget of wall clock.
  """
  config = reduced_config("performer", scratch["segment_seconds"], options.smoke)
  config.data = data
  steps = max(int(scratch["steps"]), 2)
  with tempfile.TemporaryDirectory(prefix="bench-mae-") as workdir:
    pretrain_seconds = pretrain_encoder(config, steps, pathlib.Path(workdir))
    config.init_from = workdir
    transfer = functools.partial(transfer_lib.transfer_encoder, config=config, which="latest")
    record = train_cell(config, options, budget, initial_params_fn=transfer)
  record.update(
    table="table3",
    mae_init=True,
    status="ran",
    pretrain_steps=steps,
    pretrain_seconds=pretrain_seconds,
  )
  return [{**scratch, "table": "table3", "mae_init": False}, record]


def run(options: BenchOptions, results: dict) -> list[dict]:
  budget = 2.0 if options.smoke else float(options.seed_budget_seconds)
  records = []
  for seconds in SMOKE_SECONDS if options.smoke else SECONDS:
    for model_name in PREFIX:
      config = reduced_config(model_name, seconds, options.smoke)
      config.data = options.data
      record = train_cell(config, options, budget)
      record.update(table="table1", status="ran")
      record.update(full_size_memory(results, model_name, seconds, options.device_memory_gib))
      records.append(record)
  table1 = {(r["model"], r["segment_seconds"]): r for r in records}
  for seconds in SMOKE_SECONDS if options.smoke else SECONDS:
    performer, convtasnet = table1[("performer", seconds)], table1[("convtasnet", seconds)]
    records.append(
      {
        "table": "table2",
        "segment_seconds": float(seconds),
        "performer_examples_per_second": performer["examples_per_second"],
        "convtasnet_examples_per_second": convtasnet["examples_per_second"],
        # Epoch time is examples / rate: Conv-TasNet's epoch over the Performer's.
        "epoch_time_ratio": performer["examples_per_second"] / convtasnet["examples_per_second"],
      }
    )
  shortest = (SMOKE_SECONDS if options.smoke else SECONDS)[0]
  with_aux = table1[("performer", shortest)]
  records.append({**with_aux, "table": "aux_ablation", "aux_losses": True})
  config = reduced_config("performer", shortest, options.smoke)
  config.data = options.data
  config.diversity_weight = 0.0
  config.sparsity_weight = 0.0
  without = train_cell(config, options, budget)
  records.append({**without, "table": "aux_ablation", "aux_losses": False, "status": "ran"})
  records.extend(mae_cells(options, with_aux, budget, options.data))
  return records


def summarize(records: list[dict]) -> dict:
  summary: dict = {"seed_table2_speedup_3s": SEED_TABLE2_SPEEDUP_3S}
  for r in records:
    if r["table"] == "table1":
      summary[f"{r['model']}_{r['segment_seconds']:g}s_gain_db"] = r["stem_si_snri_gain_db"]
    elif r["table"] == "table2":
      summary[f"epoch_time_ratio_{r['segment_seconds']:g}s"] = r["epoch_time_ratio"]
  return summary
