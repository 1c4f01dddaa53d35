"""Benchmarks: memory, speed and scale, side by side.

  python -m trackformer_jax.bench --suite memory|speed|mixit|favor|separate|pipeline|seed-tables|all
      [--smoke] --out bench.json

One module per suite; each has ``run(options, results) -> list[dict]`` (flat records, one per
measured configuration) and ``summarize(records) -> dict`` (the derived figures: ratios,
targets met, the crossover). ``results`` holds the suites already run in this invocation (or
merged from an earlier ``--out`` with ``--update``), so a later suite reuses an earlier one's
figures instead of measuring them twice (mixit takes the whole-step time from speed,
seed-tables the full-size memory from memory).

``SUITES`` lists them in the order ``all`` runs them: memory first, so that seed-tables can
mark a full-size configuration over the memory budget as OOM.
"""

SUITES = ("memory", "speed", "mixit", "favor", "separate", "pipeline", "seed-tables")


def suite_key(suite: str) -> str:
  """The JSON key of a suite: ``seed-tables`` -> ``seed_tables``."""
  return suite.replace("-", "_")
