"""The ``--plots`` picture of a separated song: spectrograms of the input and the stems, and
each output's activity over time, collected block by block in bounded memory."""

from __future__ import annotations

import math

import numpy as np


class PlotAccumulator:
  """Collects, block by block, a bounded-size picture of a song for ``--plots``.

  Spectrogram frames are taken every ``hop`` frames with ``hop`` chosen from the song's
  length so that at most ``max_frames`` columns are kept, whatever the length.
  """

  def __init__(self, names, num_outputs, sample_rate_hz, num_frames, max_frames=1200):
    self.names = list(names)
    self.sample_rate_hz = sample_rate_hz
    self.n_fft = 1024 if sample_rate_hz >= 16000 else 256
    self.hop = max(self.n_fft // 2, math.ceil(num_frames / max_frames))
    self.window = np.hanning(self.n_fft).astype(np.float32)
    self._buffer = np.zeros((1 + len(self.names) + num_outputs, 0), np.float32)
    self.spectra: list[np.ndarray] = []  # each [1 + stems, F]
    self.activity: list[np.ndarray] = []  # each [N] RMS over one hop

  def push(self, outputs: np.ndarray, stems: dict[str, np.ndarray]) -> None:
    mixture = outputs.sum(axis=0).mean(axis=0)
    rows = [mixture] + [stems[s].mean(axis=0) for s in self.names] + list(outputs.mean(axis=1))
    # The buffer never holds more than one column's frames and a block.
    self._buffer = np.concatenate([self._buffer, np.stack(rows).astype(np.float32)], axis=-1)
    num_spectra = 1 + len(self.names)
    size = max(self.hop, self.n_fft)
    start = 0
    while self._buffer.shape[-1] - start >= size:
      frame = self._buffer[:, start : start + size]
      spectrum = np.abs(np.fft.rfft(frame[:num_spectra, : self.n_fft] * self.window))
      self.spectra.append(spectrum)
      self.activity.append(np.sqrt(np.mean(frame[num_spectra:, : self.hop] ** 2, axis=-1)))
      start += self.hop
    self._buffer = self._buffer[:, start:].copy()

  def save(self, path, *, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    spectra = (
      np.stack(self.spectra, axis=-1) if self.spectra else np.zeros((1 + len(self.names), 1, 1))
    )
    activity = np.stack(self.activity, axis=-1) if self.activity else np.zeros((1, 1))
    duration = max(spectra.shape[-1] * self.hop / self.sample_rate_hz, 1e-3)
    extent = [0, duration, 0, self.sample_rate_hz / 2000]

    def db(x):
      return 20 * np.log10(np.maximum(x, 1e-6))

    rows = 2 + len(self.names)
    fig, axes = plt.subplots(rows, 1, figsize=(10, 1.6 * rows + 1), sharex=True, squeeze=False)
    axes = axes[:, 0]
    top = db(spectra.max()) if spectra.size else 0.0
    panels = [("input", spectra[0])] + [(n, spectra[1 + i]) for i, n in enumerate(self.names)]
    for ax, (label, spectrum) in zip([axes[0], *axes[2:]], panels):
      ax.imshow(
        db(spectrum),
        origin="lower",
        aspect="auto",
        extent=extent,
        vmin=top - 80,
        vmax=top,
        cmap="magma",
      )
      ax.set_ylabel(f"{label}\nkHz")
    activity_db = db(activity)
    axes[1].imshow(
      activity_db,
      origin="lower",
      aspect="auto",
      cmap="viridis",
      interpolation="nearest",
      extent=[0, duration, -0.5, activity.shape[0] - 0.5],
      vmin=activity_db.max() - 60,
      vmax=activity_db.max(),
    )
    axes[1].set_yticks(range(activity.shape[0]))
    axes[1].set_ylabel("output\nactivity (dB)")
    axes[-1].set_xlabel("time (s)")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
