"""Every file in configs/ loads, passes the config checks, and its train step compiles.

The train step is lowered from ``jax.ShapeDtypeStruct``s at the config's real sizes (30 s of
44.1 kHz audio for perf30) and compiled, never run: this proves the program builds for the
shapes a real run feeds it, without the memory or the time to execute it. The Conv-TasNet
configs are lowered at real size but not compiled (see the test for the measured reason).
"""

from __future__ import annotations

import json
import pathlib

import flax
import jax
import pytest
from absl import flags
from ml_collections import config_flags

from trackformer_jax import models, train
from trackformer_jax.training import config_files

REPO = pathlib.Path(__file__).resolve().parents[1]

CONFIG_FILES = sorted((REPO / "configs").glob("*.py"))
# Small enough to compile in a few seconds; the rest are real-size models.
FAST_CONFIGS = {"test.py", "quick.py"}
FAST_COMPILE = {"xla_backend_optimization_level": "0", "xla_llvm_disable_expensive_passes": "True"}


# Several files compile the same program (perf3 and perf3_nomae differ only in where the
# weights start; default.py has perf3's sizes): each distinct one is compiled once.
pytestmark = pytest.mark.usefixtures("compilation_cache")


def load_config(path: pathlib.Path):
  return config_files.load_config(path.name)


def test_the_experiment_files_are_all_there():
  names = {path.name for path in CONFIG_FILES}
  expected = {f"perf{s}.py" for s in (3, 5, 10, 30)} | {f"convtasnet{s}.py" for s in (3, 5, 10, 30)}
  expected |= {"default.py", "perf30_stereo.py", "quick.py", "test.py"}
  assert expected <= names, sorted(expected - names)


# What each file name's config sets apart from ``default.py`` ({"model.hop": 64, ...};
# "<absent>" for a field it drops), fixed so that rearranging configs/ cannot change what a
# name trains (where they were taken: docs/history.md); a field added to default.py for every
# config leaves these alone. ``name:arg``: a file with an argument.
SNAPSHOTS = json.loads((REPO / "tests" / "config_snapshots.json").read_text())


def fields_apart_from_default(config) -> dict:
  # Through JSON as config.json is written; comparing dumps keeps ints and floats apart.
  flat = flax.traverse_util.flatten_dict
  ours = flat(json.loads(json.dumps(config.to_dict(), default=list)), sep=".")
  base = flat(json.loads(json.dumps(config_files.load_config("default").to_dict())), sep=".")
  apart = {
    key: value
    for key, value in ours.items()
    if json.dumps(base.get(key)) != json.dumps(value) or key not in base
  }
  apart.update({key: "<absent>" for key in base if key not in ours})
  return apart


@pytest.mark.parametrize("name", sorted(SNAPSHOTS))
def test_each_config_name_gives_the_config_it_always_gave(name):
  apart = fields_apart_from_default(config_files.load_config(name))
  assert json.dumps(apart, sort_keys=True) == json.dumps(SNAPSHOTS[name], sort_keys=True)


def test_a_config_argument_names_a_variant_or_fails_naming_the_file():
  assert config_files.load_config("perf:5,nomae").to_dict() == (
    config_files.load_config("perf5_nomae").to_dict()
  )
  assert config_files.load_config("configs/convtasnet.py:10").segment_seconds == 10.0
  with pytest.raises(ValueError, match="configs/perf.py:30,mono"):
    config_files.load_config("perf:30,mono")
  with pytest.raises(ValueError, match="configs/convtasnet.py:long"):
    config_files.load_config("convtasnet:long")
  with pytest.raises(ValueError, match="no such config"):
    config_files.load_config("perf31")


def test_the_perf_configs_pretrain_as_mae_pretrain_does_and_share_its_workdir():
  # So that a run pre-trained by ``configs/mae_pretrain.py`` is the one perf*.py reuse.
  for name, pretraining in [(f"perf{s}", "mae_pretrain") for s in (3, 5, 10, 30)] + [
    ("perf30_stereo", "mae_pretrain:stereo")
  ]:
    derived = train.pretraining_config(config_files.load_config(name))
    assert derived.to_dict() == config_files.load_config(pretraining).to_dict(), name
  for seconds in (3, 5, 10, 30):
    assert train.pretraining_config(config_files.load_config(f"perf{seconds}_nomae")) is None
  assert train.pretraining_config(config_files.load_config("test")) is None
  recipe = config_files.load_config("tiny:recipe")
  train.validate_config(recipe, num_devices=1)  # init_from need not exist: it is made first
  train.validate_config(train.pretraining_config(recipe), num_devices=1)


@pytest.mark.parametrize(
  "path",
  [
    pytest.param(path, id=path.stem, marks=() if path.name in FAST_CONFIGS else pytest.mark.slow)
    for path in CONFIG_FILES
  ],
)
def test_config_loads_and_its_train_step_compiles(path):
  config = load_config(path)
  default = load_config(REPO / "configs" / "default.py")
  # An experiment overrides fields; it never drops one the trainer reads.
  missing = set(default.to_dict()) - set(config.to_dict())
  assert not missing, f"{path.name} lacks {sorted(missing)}"
  # perf*.py start from runs/mae_pretrain, which a fresh checkout has not trained yet; that
  # workdir is checked when training starts, not here (the step does not depend on it).
  config.init_from = ""
  train.validate_config(config, num_devices=1)

  optimizer = train.create_optimizer(config)
  mesh = train.create_mesh(jax.devices()[:1])
  if config.get("task", "mixit") == "mae":
    from trackformer_jax.models import mae

    model = mae.create_mae(config)
    step = train.compile_train_step(config, model, optimizer, mesh)
  else:
    model = models.create_model(config.model)
    step = train.compile_train_step(config, model, optimizer, mesh)
  state, batch, rng = train.abstract_train_inputs(config, model, optimizer, mesh)
  assert batch["mom"].shape == (
    config.batch_size,
    config.channels,
    round(config.segment_seconds * config.sample_rate_hz),
  )
  lowered = step.lower(state, batch, rng)
  new_state, metrics = lowered.out_info
  assert jax.tree.structure(new_state) == jax.tree.structure(state)
  if config.model.name == "convtasnet":
    # Lowered at real size, not compiled: XLA's CPU compiler takes minutes on Conv-TasNet's
    # step, beyond any CI budget (docs/history.md). The Performer configs compile below.
    return
  # Whether the program compiles does not depend on how hard LLVM optimises it; skipping
  # the expensive passes halves the compile time of the real-size models.
  compiled = lowered.compile(compiler_options=FAST_COMPILE)
  new_state, metrics = compiled.out_info
  assert jax.tree.structure(new_state) == jax.tree.structure(state)
  assert {"loss", "grad_norm", "learning_rate", "skipped"} <= set(metrics)


def parse_config_flags(argv: list[str]):
  flag_values = flags.FlagValues()
  # config_flags finds the --config.* overrides in the argv it is given at definition time.
  config_flags.DEFINE_config_file(
    "config", None, flag_values=flag_values, lock_config=True, sys_argv=argv
  )
  flag_values(argv)
  return flag_values.config


def test_fields_can_be_overridden_from_the_command_line():
  argv = ["main", f"--config={REPO / 'configs' / 'perf3.py'}", "--config.batch_size=8"]
  argv += ["--config.model.num_layers=2", "--config.data=musdb:/somewhere"]
  config = parse_config_flags(argv)
  assert config.batch_size == 8 and config.model.num_layers == 2
  assert config.data == "musdb:/somewhere" and config.segment_seconds == 3.0


def test_a_config_argument_goes_after_a_colon_on_the_command_line():
  argv = ["main", f"--config={REPO / 'configs' / 'perf.py'}:10,stereo"]
  config = parse_config_flags(argv + ["--config.pretrain.num_train_steps=5"])
  assert config.segment_seconds == 10.0 and config.channels == 2
  assert config.pretrain.num_train_steps == 5
