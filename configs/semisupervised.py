"""quick.py trained semi-supervised: MixIT on ``config.data`` beside a stem loss on ``bundled``.

The MixIT paper's semi-supervised setting (``training/tasks/semisupervised.py``): a user's
unlabeled songs (``--config.data=folder:PATH``) train by MixIT while the bundled corpus, whose
stems are known, adds a supervised term on single songs. It uses labels, so it is an option
measured apart from the label-free default (docs/music.md).

  python -m trackformer_jax.main --config=configs/semisupervised.py \\
      --config.data=folder:PATH --workdir=runs/semi
"""

import ml_collections

from configs import quick


def get_config():
  config = quick.get_config()
  config.task = "semisupervised"
  # Its labelled songs stay whole, as it was measured (docs/music.md); remixing them is untried.
  config.augment.remix_stems = False
  config.augment.stem_dropout = 0.0
  config.supervised = ml_collections.ConfigDict(
    dict(
      data="bundled",  # a source with stems
      weight=1.0,  # of the stem loss, beside MixIT's weight of 1
      batch_size=4,  # labelled songs per step, beside config.batch_size mixtures of mixtures
    )
  )
  return config
