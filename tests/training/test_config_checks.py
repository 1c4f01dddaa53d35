"""Impossible configs: one line naming the field and the reason, before anything is built.

``train.validate_config`` runs first in ``train_and_evaluate``; these tests check each
impossible value gives a ``ConfigError`` whose message is ``config.<field> = <value>: <reason>``
on one line, that nothing was built, compiled or written by then, and (in a subprocess) that
``python -m trackformer_jax.main`` turns it into one ``error:`` line and exit status 2.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

from trackformer_jax import train
from trackformer_jax.training import state as state_lib
from trackformer_jax.training import steps, workdir

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_config(data_spec: str, overrides=None):
  from configs import test as test_config

  config = test_config.get_config()
  config.data = data_spec
  for dotted, value in (overrides or {}).items():
    target = config
    *parents, field = dotted.split("__")
    for parent in parents:
      target = target[parent]
    target[field] = value
  return config


test_config.__test__ = False  # a helper, not a test

# (overrides, the field the message names, words the reason holds). Fields in nested
# ConfigDicts are written with "__" (model__num_outputs = config.model.num_outputs).
IMPOSSIBLE = [
  # The segment against the front end's window: STFT, learned encoder, Conv-TasNet.
  ({"segment_seconds": 0.01}, "segment_seconds", "shorter than one STFT window"),
  (
    {"model__frontend": "learned", "model__encoder_window": 256, "segment_seconds": 0.02},
    "segment_seconds",
    "shorter than one encoder window (model.encoder_window = 256)",
  ),
  (
    {"model__name": "convtasnet", "model__tasnet_L": 200, "segment_seconds": 0.02},
    "segment_seconds",
    "shorter than one encoder window (model.tasnet_L = 200)",
  ),
  ({"segment_seconds": -1.0}, "segment_seconds", "must be positive"),
  # MixIT mixes two mixtures: fewer than two outputs cannot be assigned to them.
  ({"model__num_outputs": 1}, "model.num_outputs", "at least 2 outputs"),
  ({"model__num_outputs": 0}, "model.num_outputs", "at least 2 outputs"),
  ({"learning_rate": -1e-3}, "learning_rate", "must be positive"),
  ({"learning_rate": float("nan")}, "learning_rate", "finite number"),
  ({"end_learning_rate": -1e-5}, "end_learning_rate", "zero or positive"),
  ({"batch_size": 0}, "batch_size", "at least 1"),
  ({"warmup_steps": -5}, "warmup_steps", "zero or positive"),
  ({"model__name": "unet"}, "model.name", "is not a model"),
  ({"model__frontend": "wavelet"}, "model.frontend", "must be one of"),
  ({"model__d_model": 33}, "model.d_model", "divisible by num_heads"),
  ({"task": "supervised"}, "task", "expected 'mixit' or 'mae'"),
  ({"data": "youtube:/music"}, "data", "unknown kind 'youtube'"),
  ({"data": "musdb:"}, "data", "needs a path"),
  ({"data": "musdb:/no/such/folder"}, "data", "/no/such/folder does not exist"),
  ({"data": "folder:/no/such/folder"}, "data", "/no/such/folder does not exist"),
  ({"init_from": "/no/such/workdir"}, "init_from", "no such workdir"),
  ({"sample_rate_hz": 100}, "sample_rate_hz", "at least 1000"),
  ({"channels": 0}, "channels", "1 (mono) or 2 (stereo)"),
  ({"keep_checkpoints": 0}, "keep_checkpoints", "at least 1"),
  ({"sparsity_kind": "l0"}, "sparsity_kind", "expected one of"),
  ({"augment__stem_dropout": 1.0}, "augment.stem_dropout", "must be in [0, 1)"),
  ({"augment__stem_dropout": 0.5}, "augment.stem_dropout", "needs config.augment.remix_stems"),
]


@pytest.fixture
def nothing_built(monkeypatch, tmp_path):
  """Fails if training builds a model, a state or a step, or touches the workdir."""
  from trackformer_jax import models

  def too_far(*args, **kwargs):
    raise AssertionError("training went past the config checks")

  for module, name in (
    (models, "create_model"),
    (state_lib, "init_train_state"),
    (steps, "compile_train_step"),
    (workdir, "prepare_workdir"),
  ):
    monkeypatch.setattr(module, name, too_far)
  return tmp_path / "run"


@pytest.mark.parametrize(
  ("overrides", "field", "reason"), IMPOSSIBLE, ids=[str(case[0]) for case in IMPOSSIBLE]
)
def test_an_impossible_value_is_one_line_naming_the_field(
  tiny_musdb, nothing_built, overrides, field, reason
):
  config = test_config(f"musdb:{tiny_musdb}", overrides)
  with pytest.raises(train.ConfigError) as error:
    train.train_and_evaluate(config, nothing_built)
  message = str(error.value)
  assert "\n" not in message
  assert message.startswith(f"config.{field}"), message
  assert reason in message, message
  assert not nothing_built.exists()


def test_the_test_config_itself_passes(tiny_musdb):
  # The checks above would mean nothing if every config failed them.
  train.validate_config(test_config(f"musdb:{tiny_musdb}"), num_devices=1)
  for name in ("convtasnet", "performer", "dense_transformer"):
    train.validate_config(test_config(f"musdb:{tiny_musdb}", {"model__name": name}), num_devices=1)


@pytest.mark.slow  # two processes import jax and TensorFlow (together, so ~one start-up)
def test_the_training_cli_reports_impossible_values_in_one_line(tiny_musdb, tmp_path):
  cases = {
    "model": (["--config.model.name=unet"], "error: config.model.name = 'unet' is not a model"),
    "data": (
      [f"--config.data=musdb:{tmp_path / 'missing'}"],
      f"error: config.data = 'musdb:{tmp_path / 'missing'}': {tmp_path / 'missing'} does not exist",
    ),
    "outputs": (
      ["--config.model.num_outputs=1"],
      "error: config.model.num_outputs = 1: MixIT needs at least 2 outputs",
    ),
  }
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  processes = {
    name: subprocess.Popen(
      [sys.executable, "-m", "trackformer_jax.main", "--config=configs/test.py"]
      + [f"--config.data=musdb:{tiny_musdb}", *flags, f"--workdir={tmp_path / name}"],
      cwd=REPO,
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for name, (flags, _) in cases.items()
  }
  for name, process in processes.items():
    _, stderr = process.communicate(timeout=600)
    assert process.returncode == 2, stderr[-2000:]
    assert "Traceback" not in stderr
    last_line = stderr.strip().splitlines()[-1]
    assert last_line.startswith(cases[name][1]), last_line
    assert not (tmp_path / name).exists()  # refused before the workdir was made
