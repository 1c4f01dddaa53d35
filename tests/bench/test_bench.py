"""The benchmark tool: every suite at --smoke sizes, its JSON against the schema, the tables.

One smoke run of all suites is shared by the tests (a module fixture): compiling the tiny
train steps is most of its cost, and the suites share compilations inside one process.
"""

import copy
import json

import pytest

from trackformer_jax.bench import SUITES, suite_key
from trackformer_jax.bench.__main__ import main
from trackformer_jax.bench.schema import SchemaError, check_results


@pytest.fixture(scope="module")
def smoke_results(tmp_path_factory, tiny_musdb):
  folder = tmp_path_factory.mktemp("bench")
  out, markdown = folder / "bench.json", folder / "bench.md"
  argv = ["--suite", "all", "--smoke", "--out", str(out), "--markdown", str(markdown)]
  assert main(argv + ["--data", f"musdb:{tiny_musdb}"]) == 0
  return json.loads(out.read_text()), markdown.read_text()


@pytest.mark.slow
def test_every_suite_writes_schema_valid_records(smoke_results):
  results, _ = smoke_results
  check_results(results)
  assert {suite_key(s) for s in SUITES} <= set(results)
  assert results["meta"]["smoke"] is True
  assert results["meta"]["machine"]["cpu_cores"] >= 1


@pytest.mark.slow
def test_memory_records_add_up_and_grow_with_length(smoke_results):
  records = {r["config"]: r for r in smoke_results[0]["memory"]}
  assert {"perf0.5", "convtasnet0.5", "dense0.5", "perf1"} <= set(records)
  for r in records.values():
    total = r["argument_bytes"] + r["output_bytes"] + r["temp_bytes"] - r["alias_bytes"]
    assert r["peak_bytes"] == total > 0
    # The state is donated: its buffers are reused for the new state.
    assert r["alias_bytes"] > 0
  assert records["perf1"]["temp_bytes"] > records["perf0.5"]["temp_bytes"]
  assert records["perf1"]["argument_bytes"] > records["perf0.5"]["argument_bytes"]  # the batch


@pytest.mark.slow
def test_speed_and_mixit_share_the_step_time(smoke_results):
  results, _ = smoke_results
  speed = {r["model"]: r for r in results["speed"]}
  assert speed.keys() == {"performer", "convtasnet"}
  assert all(r["status"] == "ran" and r["step_seconds"] > 0 for r in speed.values())
  for r in speed.values():
    # XLA's count of the compiled step; throughput is that over the timed step. No
    # --peak-tflops in the smoke run, so no utilisation is claimed.
    assert r["flops_per_step"] > 0
    assert r["achieved_tflops_per_second"] == pytest.approx(
      r["flops_per_step"] / r["step_seconds"] / 1e12
    )
    assert r["model_flops_utilisation"] is None
  ratio = results["summary"]["speed"]["step_ratio_0.5s"]
  assert ratio == pytest.approx(
    speed["performer"]["step_seconds"] / speed["convtasnet"]["step_seconds"]
  )
  for r in results["mixit"]:
    # The fast search is exact: the same minimum as remixing every assignment.
    assert r["max_loss_difference_db"] < 1e-3
    assert r["num_assignments"] == r["num_mixtures"] ** 8
    assert r["step_source"] == "speed suite"
    assert r["step_seconds"] == speed["performer"]["step_seconds"]


@pytest.mark.slow
def test_a_given_peak_turns_throughput_into_model_flops_utilisation(smoke_results):
  from trackformer_jax.bench import speed
  from trackformer_jax.bench.experiments import smoke_config

  # The smoke run compiled this step already: the process-wide cache makes this a re-run.
  config = smoke_config("performer", speed.SMOKE_SECONDS[0])
  record = speed.time_train_step(config, 1, host_memory_gib=100.0, peak_tflops=0.5)
  assert record["model_flops_utilisation"] == pytest.approx(
    record["achieved_tflops_per_second"] / 0.5
  )
  assert 0 < record["model_flops_utilisation"]


@pytest.mark.slow
def test_exact_attention_memory_grows_faster_than_favor(smoke_results):
  by = {(r["attention"], r["length"]): r for r in smoke_results[0]["favor"]}
  lengths = sorted({n for _, n in by})
  short, long = lengths[0], lengths[-1]

  def growth(name):
    return by[(name, long)]["train_peak_bytes"] / by[(name, short)]["train_peak_bytes"]

  assert growth("exact") > growth("favor")
  assert all(r["status"] == "ran" and r["train_seconds"] > 0 for r in by.values())


@pytest.mark.slow
def test_separate_and_pipeline_measure_real_work(smoke_results):
  results, _ = smoke_results
  (song,) = results["separate"]
  assert song["song_seconds"] == pytest.approx(2.0)
  assert song["real_time_factor"] == pytest.approx(song["separate_seconds"] / 2.0)
  assert song["peak_rss_bytes"] >= song["rss_before_bytes"] > 0
  for r in results["pipeline"]:
    assert r["batches_per_second"] > 0 and r["batch_size"] == 4
    assert r["audio_seconds_per_second"] == pytest.approx(
      r["examples_per_second"] * r["segment_seconds"]
    )


@pytest.mark.slow
def test_seed_tables_cells_have_controls_and_ratios(smoke_results):
  records = smoke_results[0]["seed_tables"]
  tables = {r["table"] for r in records}
  assert tables == {"table1", "table2", "table3", "aux_ablation"}
  table1 = {r["model"]: r for r in records if r["table"] == "table1"}
  assert table1.keys() == {"performer", "convtasnet"}
  for r in table1.values():
    assert r["steps"] >= 2 and r["train_seconds"] >= r["budget_seconds"]
    assert r["stem_si_snri_gain_db"] == pytest.approx(
      r["stem_si_snri_db"] - r["control_stem_si_snri_db"]
    )
  (table2,) = [r for r in records if r["table"] == "table2"]
  assert table2["epoch_time_ratio"] == pytest.approx(
    table1["performer"]["examples_per_second"] / table1["convtasnet"]["examples_per_second"]
  )
  ablation = {r["aux_losses"]: r for r in records if r["table"] == "aux_ablation"}
  assert ablation.keys() == {True, False}
  assert ablation[True]["steps"] == table1["performer"]["steps"]  # the same cell
  mae = {r["mae_init"]: r for r in records if r["table"] == "table3"}
  assert mae.keys() == {True, False}
  assert mae[True]["status"] == "ran" and mae[True]["pretrain_steps"] >= 2


@pytest.mark.slow
def test_markdown_has_a_section_per_suite(smoke_results):
  _, markdown = smoke_results
  for suite in SUITES:
    assert f"### {suite_key(suite)}" in markdown
  assert "Table 1" in markdown and "python -m trackformer_jax.bench --suite all" in markdown


def test_schema_names_the_missing_or_mistyped_field():
  results = {
    "meta": {
      "date_utc": "2026-01-01 00:00",
      "command": "x",
      "machine": {},
      "jax_version": "0",
      "smoke": True,
    },
    "memory": [
      {
        "config": "perf30",
        "model": "performer",
        "segment_seconds": 30.0,
        "batch_size": 4,
        "peak_bytes": 10,
        "argument_bytes": 4,
        "output_bytes": 3,
        "temp_bytes": 3,
        "alias_bytes": 0,
        "peak_gib": 1e-8,
      }
    ],
    "summary": {"memory": {}},
  }
  check_results(results)
  broken = copy.deepcopy(results)
  del broken["memory"][0]["peak_bytes"]
  with pytest.raises(SchemaError, match=r"memory\[0\]: missing field 'peak_bytes'"):
    check_results(broken)
  broken = copy.deepcopy(results)
  broken["memory"][0]["batch_size"] = True
  with pytest.raises(SchemaError, match=r"memory\[0\]\.batch_size: expected int"):
    check_results(broken)
  broken = copy.deepcopy(results)
  broken["speedd"] = []
  with pytest.raises(SchemaError, match="speedd: not a suite"):
    check_results(broken)
  broken = copy.deepcopy(results)
  del broken["summary"]["memory"]
  with pytest.raises(SchemaError, match="summary.memory"):
    check_results(broken)


def test_separate_child_reports_its_own_peak_not_its_parents():
  # The parent holds ~400 MiB when it starts the child; ru_maxrss would carry that over
  # across fork + exec, VmHWM (what the separate suite reads) does not.
  import subprocess
  import sys

  import numpy as np

  from trackformer_jax.resources import peak_rss_bytes

  ballast = np.ones(400 * 2**20 // 8)
  parent_peak = peak_rss_bytes()
  assert parent_peak >= ballast.nbytes
  child = subprocess.run(
    [
      sys.executable,
      "-c",
      "from trackformer_jax.resources import peak_rss_bytes; print(peak_rss_bytes())",
    ],
    capture_output=True,
    text=True,
    check=True,
  )
  child_peak = int(child.stdout.strip())
  assert 0 < child_peak < parent_peak - ballast.nbytes // 2
