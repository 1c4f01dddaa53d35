"""The seed's recipe on 30 s segments: Performer separator (12 layers, 256 random features per
head, N = 8 masks), MixIT + diversity + sparsity, batch 4, AdamW (weight decay 0.01) with a short
warm-up and cosine decay 1e-4 -> 1e-5, mono at 44.1 kHz.

  python -m trackformer_jax.main --config=configs/perf30.py [--config.data=musdb:PATH]

Starts from the Audio-MAE encoder of ``runs/mae_pretrain``, so pre-train first (once for all
four): ``python -m trackformer_jax.main --config=configs/mae_pretrain.py``; without it, training
stops with an error naming that workdir. The ablation without pre-training: ``perf30_nomae.py``.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.model.name = "performer"
  config.segment_seconds = 30.0
  config.init_from = "runs/mae_pretrain"
  return config
