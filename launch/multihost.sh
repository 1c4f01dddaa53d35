#!/usr/bin/env bash
# Training across several hosts with JAX's own multi-host runtime (jax.distributed).
#
# Run the same command on every host, each with its own HOST_ID (0 .. NUM_HOSTS-1):
#
#   COORDINATOR=10.0.0.1:12345 NUM_HOSTS=2 HOST_ID=0 \
#     bash launch/multihost.sh --config=configs/perf30.py --workdir=/shared/runs/perf30
#
# The workdir must be on a file system every host sees (orbax writes each host's shards of a
# checkpoint; host 0 writes config.json and the metrics). Each host reads its own slice of
# every batch, so config.batch_size must be a multiple of the total device count.
# On clusters that jax.distributed detects by itself (SLURM, Cloud TPU), leave COORDINATOR,
# NUM_HOSTS and HOST_ID unset.
set -euo pipefail
cd "$(dirname "$0")/.."

args=(--distributed)
if [ -n "${COORDINATOR:-}" ]; then
  : "${NUM_HOSTS:?set NUM_HOSTS with COORDINATOR}" "${HOST_ID:?set HOST_ID with COORDINATOR}"
  args+=(--coordinator_address="$COORDINATOR" --num_processes="$NUM_HOSTS"
         --process_id="$HOST_ID")
fi
exec .venv/bin/python -m trackformer_jax.main "${args[@]}" "$@"
