#!/usr/bin/env bash
# The README's test command: set up, lint, run the whole suite (slow tests included).
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh
.venv/bin/ruff check trackformer_jax configs tests
.venv/bin/ruff format --check trackformer_jax configs tests
# pytest exits 5 when it collected nothing; that is a failure here too.
# The slowest tests are listed at the end, so that the suite's time can be kept in check.
.venv/bin/python -m pytest -q --durations=15 "$@"
