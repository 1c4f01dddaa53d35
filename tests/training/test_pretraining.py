"""Audio-MAE pre-training (task ``mae``): its config checks, a run end to end, the transfer.

The end-to-end run pre-trains on a folder of 32 one-second clips of
``conftest.synthetic_stems`` mixtures (tones at random pitches plus noise drums; the 4-track
tiny MUSDB is too few songs: a model memorises their spectra instead of learning to read the
context) and scores its validation split (clips never trained on). Models are
``configs/tiny.py:mae`` (``configs/test.py``'s tiny Performer with 1 encoder, 1 decoder layer).
"""

from __future__ import annotations

import json
import pathlib

import flax.linen as nn
import jax
import numpy as np
import pytest
from helpers import TINY_RATE_HZ, harmonic_audio, synthetic_stems, tiny_mae_config

from trackformer_jax import audio as audio_lib
from trackformer_jax import checkpoints, models, train
from trackformer_jax.models import mae as mae_lib
from trackformer_jax.training import config_files
from trackformer_jax.training.tasks import mae as mae_task


def test_bad_mae_config_is_one_line_naming_the_field():
  for field, value in (("mask_ratio", 1.0), ("span_frames", 0), ("decoder_layers", -1)):
    config = tiny_mae_config()
    setattr(config.mae, field, value)
    with pytest.raises(train.ConfigError, match=f"config.mae.{field}"):
      mae_task.validate_config(config)
  config = tiny_mae_config()
  config.init_from = "runs/somewhere"
  with pytest.raises(train.ConfigError, match="init_from"):
    mae_task.validate_config(config)


# --------------------------------------------------------------------------------------------
# Pre-training end to end, then the transfer.


def encoder_activations(model: nn.Module, params, audio) -> jax.Array:
  """The separator's `transformer` output `[B, frames, d_model]`."""
  _, state = model.apply(
    {"params": params},
    audio,
    capture_intermediates=lambda module, _: module.name == "transformer",
    mutable=["intermediates"],
  )
  return state["intermediates"]["transformer"]["__call__"][0]


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory) -> pathlib.Path:
  root = tmp_path_factory.mktemp("mae_clips")
  for index in range(32):
    stems = synthetic_stems(500 + index, TINY_RATE_HZ, 1, TINY_RATE_HZ)
    audio_lib.write_audio(root / f"clip{index:02d}.wav", stems.sum(0), TINY_RATE_HZ, "FLOAT")
  return root


@pytest.mark.slow
def test_pretraining_beats_interpolation_and_transfers_exactly(clip_folder, tmp_path, monkeypatch):
  config = tiny_mae_config()
  config.data = f"folder:{clip_folder}"
  # Wide enough to predict 129-bin spectra (a width-32 head cannot beat the straight line),
  # and a positional conv that spans a hidden gap (span 4 + 2 tokens of window overlap a side).
  config.model.d_model = 128
  config.model.mlp_dim = 256
  config.model.pos_conv_kernel = 17
  # 600 steps: the held-out loss passes linear interpolation's near step 400 (the measured
  # curve: docs/history.md).
  config.num_train_steps = 600
  config.warmup_steps = 20
  config.learning_rate = 3e-3
  config.end_learning_rate = 3e-4
  config.log_every_steps = 200
  config.eval_every_steps = 600
  config.checkpoint_every_steps = 600
  config.num_eval_examples = 8
  # Count traces of the loss inside the real loop's step: one, however many steps run.
  traces = []
  original_loss = mae_task.training_loss

  def counted_loss(*args):
    traces.append(1)
    return original_loss(*args)

  monkeypatch.setattr(mae_task, "training_loss", counted_loss)
  workdir = tmp_path / "mae"
  state = train.train_and_evaluate(config, workdir)  # dispatches on config.task
  assert int(state.step) == 600
  assert len(traces) == 1

  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  evals = {row["step"]: row for row in rows if "eval/reconstruction_loss" in row}
  assert sorted(evals) == [0, 600]
  # Held-out masked spans: better than before training, and better than a straight line
  # drawn across each gap from the visible frames' clean spectra.
  final = evals[600]
  assert final["eval/reconstruction_loss"] < evals[0]["eval/reconstruction_loss"] - 0.2
  assert final["eval/reconstruction_loss"] < final["eval/interpolation_loss"]
  train_rows = [row for row in rows if "train/reconstruction" in row]
  assert train_rows[-1]["train/reconstruction"] < train_rows[0]["train/reconstruction"]

  # Transfer: the separator's encoder computes what the pre-trained one computes unmasked.
  mixit_config = config.copy_and_resolve_references()
  mixit_config.task = "mixit"
  mixit_config.init_from = str(workdir)
  separator = models.create_model(mixit_config.model)
  audio = harmonic_audio(jax.random.PRNGKey(5), 2, 4000)
  fresh = jax.jit(separator.init)(jax.random.PRNGKey(1), audio)["params"]
  transferred = train.transfer_encoder(fresh, mixit_config, "latest")
  _, saved = checkpoints.load_params(workdir, "latest")
  for name in ("input_projection", "positional_conv", "transformer"):
    jax.tree.map(np.testing.assert_array_equal, transferred[name], saved[name])
  for name in ("output_norm", "mask_head"):  # the heads stay fresh
    jax.tree.map(np.testing.assert_array_equal, transferred[name], fresh[name])
  mae_model = mae_lib.create_mae(config)
  _, aux = jax.jit(mae_model.apply)({"params": saved}, audio)  # mask_key None: nothing masked
  separator_encoded = jax.jit(lambda p, a: encoder_activations(separator, p, a))(transferred, audio)
  np.testing.assert_allclose(separator_encoded, aux["encoded"], rtol=1e-5, atol=1e-5)
  assert not np.allclose(
    jax.jit(lambda p, a: encoder_activations(separator, p, a))(fresh, audio), aux["encoded"]
  )

  # Clear errors naming the workdir.
  mixit_config.init_from = str(tmp_path / "nowhere")
  with pytest.raises(checkpoints.CheckpointError, match="nowhere.*mae_pretrain.py"):
    train.transfer_encoder(fresh, mixit_config)
  mixit_config.init_from = str(workdir)
  mixit_config.model.d_model = 64
  narrow = jax.eval_shape(
    models.create_model(mixit_config.model).init, jax.random.PRNGKey(1), audio
  )
  with pytest.raises(
    checkpoints.CheckpointError, match=r"mae': input_projection/\w+ is \(.*\) in step 600"
  ):
    train.transfer_encoder(narrow["params"], mixit_config)
  mixit_config.model.hop = 128
  with pytest.raises(checkpoints.CheckpointError, match="model.hop = 64"):
    train.transfer_encoder(narrow["params"], mixit_config)


# --------------------------------------------------------------------------------------------
# Configs.


def load_config(name: str, arg: str | None = None):
  return config_files.load_config(f"{name}:{arg}" if arg else name)


def test_perf_configs_start_from_the_pretraining_run_and_their_twins_do_not():
  pretrain_config = load_config("mae_pretrain")
  assert pretrain_config.task == "mae" and not pretrain_config.init_from
  train.validate_config(pretrain_config, num_devices=1)
  for seconds in (3, 5, 10, 30):
    with_mae = load_config(f"perf{seconds}")
    without = load_config(f"perf{seconds}_nomae")
    assert with_mae.init_from == "runs/mae_pretrain" and without.init_from == ""
    without.init_from = with_mae.init_from
    assert without.to_dict() == with_mae.to_dict()  # the twins differ in init_from only
    # What the transfer checks, and every shape of the encoder, matches the pre-training.
    assert with_mae.model.to_dict() == pretrain_config.model.to_dict()
    for field in ("sample_rate_hz", "channels"):
      assert with_mae[field] == pretrain_config[field]
  stereo = load_config("perf30_stereo")
  assert stereo.init_from == "runs/mae_pretrain_stereo"
  assert load_config("mae_pretrain", "stereo").channels == stereo.channels == 2
  quick = load_config("quick")
  quick_pretrain = load_config("mae_pretrain", "quick")
  assert quick_pretrain.model.to_dict() == quick.model.to_dict()
  assert quick_pretrain.sample_rate_hz == quick.sample_rate_hz
  with pytest.raises(ValueError, match="unknown switch"):
    load_config("mae_pretrain", "huge")


@pytest.mark.slow
def test_the_quick_pretraining_step_compiles():
  config = load_config("mae_pretrain", "quick")
  train.validate_config(config, num_devices=1)
  model = mae_lib.create_mae(config)
  optimizer = train.create_optimizer(config)
  mesh = train.create_mesh(jax.devices()[:1])
  state, batch, rng = train.abstract_train_inputs(config, model, optimizer, mesh)
  step = train.compile_train_step(config, model, optimizer, mesh)
  compiled = step.lower(state, {"mom": batch["mom"]}, rng).compile()
  new_state, metrics = compiled.out_info
  assert jax.tree.structure(new_state) == jax.tree.structure(state)
  assert {"loss", "reconstruction", "grad_norm", "learning_rate"} <= set(metrics)
