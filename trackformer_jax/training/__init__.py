"""Training: one loop (``loop.train_and_evaluate``) for every task in ``tasks``.

errors.py         ConfigError, WorkdirError, NonFiniteError: one-line failures
config_checks.py  validate_config: every field checked before anything is built
state.py          TrainState, optimiser, mesh, sharded batches, apply_gradients
steps.py          train_step / eval_step of the configured task, compiled on the mesh
workdir.py        the workdir lock, write probe, free-space and same-model checks
writers.py        metrics.jsonl and TensorBoard writers, peak memory
transfer.py       initial_params: Audio-MAE's encoder, or a separator to fine-tune
loop.py           train_and_evaluate: restore, step, log, evaluate, checkpoint
recipe.py         train_recipe: Audio-MAE pre-training first where a config has a recipe
config_files.py   load_config("perf:30") for configs/, segment_samples
tasks/            one module per ``config.task``: MixIT (mixit.py), Audio-MAE (mae.py)
"""
