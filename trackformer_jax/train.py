"""Training's entry points: ``train_and_evaluate(config, workdir)``, for every ``config.task``,
and ``train_recipe`` (Audio-MAE pre-training first where the config has a recipe for it).

The implementation is the ``training`` package (state, steps, workdir checks, writers, the
loop and one module per task); this module names what callers use from it.
"""

from trackformer_jax.training.config_checks import validate_config
from trackformer_jax.training.config_files import segment_samples
from trackformer_jax.training.errors import ConfigError, NonFiniteError, WorkdirError
from trackformer_jax.training.loop import train_and_evaluate
from trackformer_jax.training.recipe import pretraining_config, train_recipe
from trackformer_jax.training.state import (
  TrainState,
  abstract_train_inputs,
  create_mesh,
  create_optimizer,
  init_train_state,
)
from trackformer_jax.training.steps import compile_train_step, evaluate, train_step
from trackformer_jax.training.transfer import transfer_encoder

__all__ = [
  "ConfigError",
  "NonFiniteError",
  "TrainState",
  "WorkdirError",
  "abstract_train_inputs",
  "compile_train_step",
  "create_mesh",
  "create_optimizer",
  "evaluate",
  "init_train_state",
  "pretraining_config",
  "segment_samples",
  "train_and_evaluate",
  "train_recipe",
  "train_step",
  "transfer_encoder",
  "validate_config",
]
