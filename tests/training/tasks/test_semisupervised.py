"""Semi-supervised MixIT: MixIT on unlabeled mixtures beside a stem loss on labelled songs."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from trackformer_jax import train
from trackformer_jax.training import config_checks, loop
from trackformer_jax.training.errors import ConfigError
from trackformer_jax.training.tasks import semisupervised


def semi_config(tiny_config, unlabeled: str, labeled: str, **overrides):
  config = tiny_config(unlabeled, task="semisupervised", **overrides)
  config.model.d_model = 32
  config.model.num_layers = 1
  config.model.num_heads = 2
  config.model.mlp_dim = 64
  config.model.num_features = 16
  config.supervised = ml_collections.ConfigDict(dict(data=labeled, weight=1.0, batch_size=2))
  return config


def test_the_stream_holds_mixtures_and_labelled_songs_whose_stems_sum_to_them(
  tiny_config, tiny_folder, tiny_musdb
):
  config = semi_config(tiny_config, f"folder:{tiny_folder}", f"musdb:{tiny_musdb}")
  batch = next(loop.train_batches(config, 0))
  frames = int(config.segment_seconds * config.sample_rate_hz)
  assert set(batch) == set(semisupervised.TRAIN_FIELDS)
  assert batch["mom"].shape == (2, 1, frames)
  assert batch["mixtures"].shape == (2, 2, 1, frames)
  assert batch["labeled_mixture"].shape == (2, 1, frames)
  assert batch["labeled_stems"].shape == (2, 4, 1, frames)
  np.testing.assert_allclose(
    batch["labeled_stems"].sum(1), batch["labeled_mixture"], rtol=1e-5, atol=1e-6
  )
  # What the step is lowered with before any data is read.
  for name, shape in semisupervised.extra_batch_shapes(config).items():
    assert batch[name].shape == shape, name
  # The labelled stream is its own: resuming at step 1 gives the second batch of both.
  second = next(loop.train_batches(config, 1))
  again = loop.train_batches(config, 0)
  next(again)
  for name, value in next(again).items():
    np.testing.assert_array_equal(value, second[name])


def test_the_stem_loss_is_best_when_outputs_are_the_stems():
  rng = np.random.default_rng(0)
  stems = jnp.asarray(rng.normal(size=(1, 4, 1, 800)).astype(np.float32))
  perfect = jnp.concatenate([stems, jnp.zeros_like(stems)], axis=1)[:, ::-1]  # 8 outputs
  mixed = jnp.broadcast_to(stems.sum(1, keepdims=True) / 8, (1, 8, 1, 800))
  best = semisupervised.stem_loss(perfect, stems, 30.0, -50.0)
  worst = semisupervised.stem_loss(mixed, stems, 30.0, -50.0)
  np.testing.assert_allclose(best, [-4 * 30.0], atol=0.1)
  assert float(worst[0]) > -10.0
  # A silent stem needs no output and costs nothing when none is sent to it.
  silent = stems.at[:, 3].set(0.0)
  outputs = jnp.concatenate([silent[:, :3], jnp.zeros((1, 5, 1, 800))], axis=1)
  np.testing.assert_allclose(
    semisupervised.stem_loss(outputs, silent, 30.0, -50.0), [-90.0], atol=0.1
  )


@pytest.mark.parametrize(
  "field, value, reason",
  [("data", "", "labelled source"), ("weight", 0.0, "positive"), ("batch_size", 0, "at least 1")],
)
def test_a_bad_supervised_field_is_named(tiny_config, tiny_folder, field, value, reason):
  config = semi_config(tiny_config, f"folder:{tiny_folder}", "bundled")
  setattr(config.supervised, field, value)
  with pytest.raises(ConfigError, match=reason):
    config_checks.validate_config(config, num_devices=jax.device_count())


def test_the_semisupervised_config_is_quick_py_with_a_labelled_source():
  from configs import quick
  from configs import semisupervised as semi_file

  config, base = semi_file.get_config(), quick.get_config()
  assert config.task == "semisupervised" and config.supervised.data == "bundled"
  config_checks.validate_config(config, num_devices=jax.device_count())
  # Its labelled songs stay whole, as it was measured; quick.py remixes them, leaving stems out.
  assert base.augment.remix_stems and not config.augment.remix_stems
  assert base.augment.stem_dropout and not config.augment.stem_dropout
  del config.task, config.supervised, base.task
  base.augment.remix_stems = False
  base.augment.stem_dropout = 0.0
  assert config.to_dict() == base.to_dict()


def test_labelled_rows_must_split_over_the_devices(tiny_config, tiny_folder, monkeypatch):
  config = semi_config(tiny_config, f"folder:{tiny_folder}", "bundled")
  config.supervised.batch_size = 3
  monkeypatch.setattr(jax, "device_count", lambda: 2)
  with pytest.raises(ConfigError, match="divide over the 2 devices"):
    semisupervised.validate_config(config)


def test_a_labelled_source_without_stems_is_refused(tiny_config, tiny_folder):
  config = semi_config(tiny_config, f"folder:{tiny_folder}", f"folder:{tiny_folder}")
  with pytest.raises(Exception, match="has no stems"):
    next(loop.train_batches(config, 0))


@pytest.mark.slow
def test_semisupervised_training_lowers_both_losses(tiny_config, tiny_folder, tiny_musdb, tmp_path):
  config = semi_config(
    tiny_config,
    f"folder:{tiny_folder}",
    f"musdb:{tiny_musdb}",
    num_train_steps=30,
    warmup_steps=2,
    learning_rate=3e-3,
    log_every_steps=10,
    eval_every_steps=30,
    checkpoint_every_steps=30,
  )
  train.train_and_evaluate(config, tmp_path / "run")
  rows = [
    json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
  ]
  train_rows = [row for row in rows if "train/supervised" in row]
  assert [row["step"] for row in train_rows] == [10, 20, 30]
  assert train_rows[-1]["train/supervised"] < train_rows[0]["train/supervised"]
  assert np.isfinite(train_rows[-1]["train/mixit"])
  # Validation is the mixit task's, on the unlabeled data (MoM only: it has no stems).
  assert any("eval/mom_si_snri_db" in row for row in rows)
