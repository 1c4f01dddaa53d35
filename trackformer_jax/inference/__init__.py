"""Inference: exported model folders, loading a separator, exporting one.

  model_folder.py  the folder's layout and JSON files: StemMap, ModelLoadError
  loading.py       LoadedModel, load_model (folder or workdir), random_init_model
  exporting.py     export_model, export_workdir (whole or not at all)

``python -m trackformer_jax.export`` is the command line over ``exporting``.
"""
