#!/usr/bin/env bash
# The README's main command: set up, build the bundled corpus, train configs/quick.py into
# runs/quick and print its validation figures, then say where everything went.
# Extra arguments go to the trainer, e.g. --config.num_train_steps=500.
# Safe to run again: setup and the corpus skip what exists, training resumes from runs/quick.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)
WORKDIR=runs/quick

echo "== 1/6 setup (.venv, FluidSynth, SoundFonts)"
bash launch/setup.sh

echo "== 2/6 the bundled corpus (data/bundled: arranged songs in thirteen styles, chorales) and"
echo "   held-out songs of each kind (rendered with a SoundFont training never hears) and held-out"
echo "   tracker modules; rendered once"
.venv/bin/python -m trackformer_jax.data.bundled --out data/bundled
# Held-out sets: the test-split songs of other seeds, rendered with TimGM6mb, which no
# training corpus uses: music the model has not heard, played differently from all it trained
# on. Training reads only the train splits; validation reads data/bundled's test splits.
.venv/bin/python -m trackformer_jax.data.songs --out data/heldout_songs --tracks 120 \
  --seconds 20 --only-split test --seed 1 --soundfont /usr/share/sounds/sf2/TimGM6mb.sf2
.venv/bin/python -m trackformer_jax.data.render --out data/heldout --tracks 120 --seconds 20 \
  --only-split test --soundfont /usr/share/sounds/sf2/TimGM6mb.sf2 --seed 1
# Music written by people with real sampled instruments: the held-out tracker modules (the
# test split, one 30 s excerpt each), rendered instrument by instrument.
.venv/bin/python -m trackformer_jax.data.modules --out data/heldout_modules --only-split test \
  --max-excerpts 1

echo "== 3/6 training configs/quick.py into $WORKDIR (about 17 minutes on 2 CPU cores)"
.venv/bin/python -m trackformer_jax.main --config=configs/quick.py --workdir="$WORKDIR" "$@"

echo
echo "== validation figures (step 0 is the untrained control)"
.venv/bin/python - "$WORKDIR" <<'PY'
import json
import pathlib
import sys

rows = [json.loads(line) for line in (pathlib.Path(sys.argv[1]) / "metrics.jsonl").open()]
evals = {row["step"]: row for row in rows if "eval/mom_si_snri_db" in row}
columns = [("mom_si_snri_db", "MoM SI-SNRi")] + [
  (f"stem_si_snri_db_{stem}", stem) for stem in ("vocals", "bass", "drums", "other")
] + [("stem_si_snri_db", "stem mean"), ("nmf_stem_si_snri_db", "NMF mean"), ("usdr_db", "uSDR"),
      ("effective_masks", "masks used")]
print(f"{'step':>6} " + " ".join(f"{title:>11}" for _, title in columns))
for step in sorted(evals):
  print(f"{step:>6} " + " ".join(f"{evals[step].get('eval/' + key, float('nan')):>11.2f}"
                                 for key, _ in columns))
if len(evals) > 1:
  first, last = evals[min(evals)], evals[max(evals)]
  gains = {title: last.get("eval/" + key, float("nan")) - first.get("eval/" + key, float("nan"))
           for key, title in columns[:6]}
  print("gain over the untrained control (dB): "
        + ", ".join(f"{title} {gain:+.2f}" for title, gain in gains.items()))
PY

echo
# The last checkpoint, not the "best": validation clips are too few to choose among
# checkpoints, and the held-out figures in the README were measured on the last one.
# Eight songs of each set, and no mixture-of-mixtures pass (validation reports it), keep the
# quickstart within its half hour; the README's figures are of the whole sets (drop
# --max-tracks and --mom-seconds to score them: about 15 minutes more).
echo "== 4/6 evaluating $WORKDIR (last checkpoint) on 8 songs of each held-out set, whole,"
echo "   against its untrained control, an NMF baseline and the ideal-ratio-mask ceiling"
for heldout in heldout_songs heldout heldout_modules; do
  .venv/bin/python -m trackformer_jax.evaluate --model "$WORKDIR" --checkpoint latest \
    --data "chorales:data/$heldout" --split test --max-tracks 8 --mom-seconds 0 \
    --out "$WORKDIR/eval/$heldout.json" --no-progress
done

echo "== 5/6 exporting $WORKDIR (last checkpoint) to exported/quick"
.venv/bin/python -m trackformer_jax.export --model "$WORKDIR" --checkpoint latest \
  --out exported/quick --overwrite

song=$(find data/heldout_songs/test -name mixture.wav | sort | head -n 1)
echo "== 6/6 separating $song with the exported model"
.venv/bin/python -m trackformer_jax.separate "$song" --model exported/quick -o separated --plots

elapsed=$(( $(date +%s) - started ))
cat <<EOF

== done in $((elapsed / 60)) min $((elapsed % 60)) s. Where everything went:
  data/bundled/                the bundled corpus: songs/ and chorales/ (MUSDB18-HQ layout)
  ~/.cache/trackformer_jax/    MuseScore General Lite decompressed for FluidSynth (216 MB),
                               and resampled/: the training songs at 16 kHz (1.2 GB)
  data/heldout_songs/test/     held-out arranged songs, another SoundFont (evaluation only)
  data/heldout/test/           held-out chorales, another SoundFont (evaluation only)
  data/heldout_modules/test/   held-out tracker modules, stems by instrument (evaluation only)
  $WORKDIR/checkpoints/      orbax checkpoints (the last few and the best)
  $WORKDIR/config.json       the exact config of this run
  $WORKDIR/metrics.jsonl     every logged number, one JSON object per line
  $WORKDIR/tensorboard/      view with: .venv/bin/tensorboard --logdir $WORKDIR/tensorboard
  $WORKDIR/eval/             heldout_songs.json, heldout.json, heldout_modules.json: per-stem
                               scores of the model, its control, NMF and the ceiling, each
                               with a Markdown table and a PNG
  exported/quick/              the exported model (params, config, metadata)
  separated/quick/             the separated test song: one WAV per output, and a PNG
EOF
