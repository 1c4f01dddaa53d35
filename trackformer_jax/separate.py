"""Separate songs of any length with a trained (exported) separator.

Python API::

  from trackformer_jax.separate import Separator
  separator = Separator("exported/quick")
  result = separator.separate_file("song.flac")       # result.stems: {name: [C, T]}
  separator.separate_to_folder("song.flac", "separated/quick/song")   # streams to disk

CLI::

  python -m trackformer_jax.separate TRACK... --model MODEL [-o separated] [--segment SECONDS]
      [--overlap 0.25] [--flac|--int24|--float32] [--plots] [-j N]
      [--checkpoint best|latest|STEP] [--weights ema|raw]   (the last two: for a workdir)
  -> separated/<model>/<track>/<stem>.wav   (<track>: the file's stem; for .../<song>/mixture.wav,
                                            the song's folder name)

How a song is put together, and why:

* **Segments.** The file is read ``segment - overlap`` frames at a time (``audio.read_audio``
  with a start frame), resampled to the model's rate with a streaming resampler, cut into
  overlapping segments of ``segment`` seconds and sent to the model ``batch_size`` at a time.
  Separated blocks are finished and handed on (to the caller, or to the output files) as soon
  as no later segment touches them, so memory does not grow with the song's length.
* **Alignment.** MixIT outputs have no fixed order: output 3 of one segment may be output 5
  of the next. Before a segment is added, its outputs are permuted to best match what is
  already there on the overlap: the permutation maximising the summed inner product of
  matched outputs, found by ``scipy.optimize.linear_sum_assignment`` on the ``N x N``
  overlap correlation matrix (exact; the same permutation minimises the summed squared
  difference, since the norms do not depend on it), instead of trying all ``N!``.
* **Weighted overlap-add.** Each segment is weighted by a trapezoid (linear ramps over the
  overlap) and the sum is divided by the summed weights, so every frame is a convex
  combination of the segments covering it.
* **Mixture consistency.** Each segment's outputs are made to sum to its input (the residual
  is shared equally, as in MixIT's mixture-consistency projection); the normalised
  overlap-add keeps that. Back at the file's rate the written outputs again sum to the
  input (to float precision), the residual ``mixture - sum of outputs`` being shared out as
  the next point says.
* **The band above the model's Nyquist.** A model at a lower rate than the file (the
  quickstart's 16 kHz model on a 44.1 kHz song) hears nothing above its Nyquist (8 kHz);
  there the residual is the whole of the song's treble (cymbals, distortion, breath, air).
  It is not split equally: ``bandwidth.BandExtender`` shares it, in an STFT of about 46 ms
  (75 % overlap), by what each output contains. Below the cutoff each output takes its own
  ratio mask ``|E_i| / sum_j |E_j|`` of the residual (the small resampling error); above it,
  each output's share, frame by frame (smoothed over about 60 ms), of the outputs' energy in
  the top octave they have (0.45-0.9 of the model's Nyquist), in each channel: a source's
  harmonics and noise go on upward with its top-octave activity; equal shares where every
  output is silent. This is an extrapolation, not separation: treble with no trace below the
  cutoff (a hi-hat whose energy lies wholly above 8 kHz) goes to whichever outputs are active
  in the top octave at that moment. The shares sum to one and the float rounding left over is
  shared equally, so the outputs sum to the input; the extension is streamed too (it holds
  back about 70 ms) and gives the same result however the song is cut into blocks. At the
  model's own rate (or a lower file rate) the residual is only the resampling error and is
  shared equally, as before.
* **Channels.** A mono model on a stereo file separates the downmix once and applies the
  result to each channel: the models' public API returns estimates, not a "mask this signal"
  method, so each output's share of the downmix is taken as a magnitude ratio mask in the
  STFT domain, ``|E_i| / sum_j |E_j|``, and applied to every channel's STFT. The masks sum to
  one, so the outputs of each channel sum to that channel. A stereo model on a mono file sees
  the mono signal on both channels; its outputs are averaged back to mono.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import dataclasses
import math
import os
import pathlib
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import scipy.optimize
import scipy.signal
import soundfile
import soxr

from trackformer_jax import audio, bandwidth, separation_plots
from trackformer_jax import export as export_lib

# read_frames(start, num_frames) -> float32 [C, num_frames]
FrameReader = Callable[[int, int], np.ndarray]
# segment_callback(estimates [n, N, C, T], masks [n, ...] or None) for the n real segments
SegmentCallback = Callable[[np.ndarray, np.ndarray | None], None]

_CHANNEL_MASK_N_FFT = 1024  # STFT for spreading a mono model's outputs over stereo channels


class SeparationError(ValueError):
  """An input that cannot be separated; the message names the file and the reason."""


@dataclasses.dataclass
class SeparationResult:
  """A separated song at the input's sample rate.

  ``outputs`` are the model's aligned outputs ``[N, C, T]``; ``stems`` the named tracks
  that are written (the outputs as ``output_i``, or summed per stem with a stem map).
  """

  outputs: np.ndarray
  stems: dict[str, np.ndarray]
  sample_rate_hz: int


# --------------------------------------------------------------------------------------------
# Pieces of the stitching, each testable alone


def overlap_add_weights(segment_frames: int, overlap_frames: int) -> np.ndarray:
  """Trapezoid ``[segment_frames]``: linear ramps over the overlap, strictly positive."""
  t = np.arange(segment_frames, dtype=np.float64)
  ramp = np.minimum((t + 1) / (overlap_frames + 1), (segment_frames - t) / (overlap_frames + 1))
  return np.minimum(ramp, 1.0).astype(np.float32)


def best_permutation(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
  """The order of ``candidate``'s outputs that best matches ``reference``.

  Args:
    reference: ``[N, ...]`` the outputs already in place, on the overlap.
    candidate: ``[N, ...]`` the new segment's outputs, on the same frames.
  Returns:
    ``perm [N]`` such that ``candidate[perm]`` is aligned with ``reference``: it maximises
    ``sum_i <reference_i, candidate_perm[i]>`` (Hungarian algorithm, exact).
  """
  n = reference.shape[0]
  correlation = reference.reshape(n, -1).astype(np.float64) @ candidate.reshape(n, -1).T
  rows, cols = scipy.optimize.linear_sum_assignment(correlation, maximize=True)
  return cols[np.argsort(rows)]


def share_residual(estimates: np.ndarray, mixture: np.ndarray) -> np.ndarray:
  """Mixture consistency: ``estimates [N, C, T]`` shifted so that they sum to ``mixture [C, T]``.

  The residual is shared equally among outputs (MixIT's unweighted projection).
  """
  residual = mixture - estimates.sum(axis=0)
  return estimates + residual[None] / estimates.shape[0]


def spread_over_channels(
  estimates_mono: np.ndarray, channels_audio: np.ndarray, n_fft: int = _CHANNEL_MASK_N_FFT
) -> np.ndarray:
  """Applies a mono separation to each channel of a multichannel signal.

  Args:
    estimates_mono: ``[N, T]`` outputs of a mono model on the downmix.
    channels_audio: ``[C, T]`` the signal whose channels are to be split.
  Returns:
    ``[N, C, T]``: channel ``c`` of output ``i`` is ``istft(M_i * stft(x_c))`` with the
    magnitude ratio mask ``M_i = |E_i| / sum_j |E_j|`` (masks sum to 1, so the outputs of a
    channel sum to that channel up to the STFT's round trip).
  """
  n_fft = min(n_fft, estimates_mono.shape[-1])
  kwargs = dict(nperseg=n_fft, noverlap=n_fft * 3 // 4, window="hann", boundary="even")
  num_frames = channels_audio.shape[-1]
  _, _, est_spec = scipy.signal.stft(estimates_mono, **kwargs)  # [N, F, frames]
  magnitude = np.abs(est_spec)
  total = magnitude.sum(axis=0, keepdims=True)
  num_outputs = estimates_mono.shape[0]
  # Where every output is silent the share is undefined; split it equally.
  masks = np.where(total > 1e-12, magnitude / np.maximum(total, 1e-12), 1.0 / num_outputs)
  _, _, channel_spec = scipy.signal.stft(channels_audio, **kwargs)  # [C, F, frames]
  _, separated = scipy.signal.istft(masks[:, None] * channel_spec[None], **kwargs)
  separated = separated[..., :num_frames]
  if separated.shape[-1] < num_frames:
    separated = np.pad(separated, [(0, 0), (0, 0), (0, num_frames - separated.shape[-1])])
  return separated.astype(np.float32)


class _Fifo:
  """A queue of ``[C, n]`` blocks from which any number of frames can be taken."""

  def __init__(self, channels: int):
    self._blocks: collections.deque[np.ndarray] = collections.deque()
    self._channels = channels
    self.frames = 0

  def push(self, block: np.ndarray) -> None:
    if block.shape[-1]:
      self._blocks.append(block)
      self.frames += block.shape[-1]

  def pop(self, n: int) -> np.ndarray:
    """Takes ``n`` frames (zero-padded if fewer are queued)."""
    parts, needed = [], n
    while needed and self._blocks:
      block = self._blocks.popleft()
      if block.shape[-1] > needed:
        self._blocks.appendleft(block[..., needed:])
        block = block[..., :needed]
      parts.append(block)
      needed -= block.shape[-1]
    self.frames -= n - needed
    if needed:
      parts.append(np.zeros(block_shape(parts, self._channels, needed), np.float32))
    return np.concatenate(parts, axis=-1) if len(parts) > 1 else parts[0]

  def peek(self, n: int) -> np.ndarray:
    """The next ``n`` frames, left queued (zero padding, if any, stays queued too)."""
    taken = self.pop(n)
    self._blocks.appendleft(taken)
    self.frames += n
    return taken


def block_shape(parts: list[np.ndarray], channels: int, frames: int) -> tuple[int, ...]:
  lead = parts[0].shape[:-1] if parts else (channels,)
  return (*lead, frames)


# --------------------------------------------------------------------------------------------
# The separator


class Separator:
  """Separates audio of any length with a loaded model; the CLI is built on it.

  Args:
    model: a ``LoadedModel`` or a path to an exported folder / training workdir.
    segment_seconds: segment length at the model's rate (default: the training crop,
      ``config.segment_seconds``, or the exported function's fixed length).
    overlap: fraction of a segment shared with the next, in ``(0, 1)``.
    batch_size: segments per model call.
    progress: show a tqdm bar per song.
    checkpoint: which checkpoint of a workdir (``best`` | ``latest`` | step).
    weights: a workdir's ``ema`` (its moving average where the run kept one) or ``raw``.
  """

  def __init__(
    self,
    model: export_lib.LoadedModel | str | os.PathLike,
    *,
    segment_seconds: float | None = None,
    overlap: float = 0.25,
    batch_size: int = 4,
    progress: bool = False,
    checkpoint: str | int = "best",
    weights: str = "ema",
  ):
    if not isinstance(model, export_lib.LoadedModel):
      model = export_lib.load_model(model, checkpoint=checkpoint, weights=weights)
    self.model = model
    if not 0.0 < overlap < 1.0:
      raise ValueError(f"overlap must be in (0, 1), got {overlap}")
    if model.fixed_input_shape is not None:
      batch_size, _, self.segment_frames = model.fixed_input_shape
    else:
      if segment_seconds is None:
        config = model.config
        segment_seconds = float(config.get("segment_seconds", 3.0)) if config else 3.0
      if segment_seconds <= 0:
        raise ValueError(f"segment must be positive, got {segment_seconds} s")
      self.segment_frames = max(2, round(segment_seconds * model.sample_rate_hz))
    self.overlap_frames = min(self.segment_frames - 1, max(1, round(overlap * self.segment_frames)))
    self.stride_frames = self.segment_frames - self.overlap_frames
    self.batch_size = int(batch_size)
    if self.batch_size < 1:
      raise ValueError(f"batch size must be at least 1, got {batch_size}")
    self.progress = progress
    self._weights = overlap_add_weights(self.segment_frames, self.overlap_frames)

  @property
  def output_names(self) -> list[str]:
    return self.model.output_names

  # ---- public entry points ------------------------------------------------------------------

  def separate_array(
    self,
    mixture: np.ndarray,
    sample_rate_hz: int,
    *,
    segment_callback: SegmentCallback | None = None,
    name: str = "<array>",
  ) -> SeparationResult:
    """Separates ``mixture [C, T]`` (or ``[T]``) sampled at ``sample_rate_hz``."""
    mixture = np.asarray(mixture, np.float32)
    if mixture.ndim == 1:
      mixture = mixture[None]
    if mixture.ndim != 2:
      raise SeparationError(f"{name}: expected audio [channels, time], got shape {mixture.shape}")

    def read_frames(start, n):
      return mixture[:, start : start + n]

    blocks = self.iter_blocks(
      read_frames,
      mixture.shape[-1],
      mixture.shape[0],
      sample_rate_hz,
      name=name,
      segment_callback=segment_callback,
    )
    parts = list(blocks)
    outputs = np.concatenate(parts, axis=-1)
    return SeparationResult(outputs, self._name_outputs(outputs), sample_rate_hz)

  def separate_file(
    self, path: str | os.PathLike, *, segment_callback: SegmentCallback | None = None
  ) -> SeparationResult:
    """Separates an audio file, keeping the whole result in memory (see separate_to_folder)."""
    info = self._checked_info(path)
    blocks = self.iter_blocks(
      self._file_reader(path),
      info.frames,
      info.channels,
      info.sample_rate_hz,
      name=str(path),
      segment_callback=segment_callback,
    )
    outputs = np.concatenate(list(blocks), axis=-1)
    return SeparationResult(outputs, self._name_outputs(outputs), info.sample_rate_hz)

  def separate_to_folder(
    self,
    path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    subtype: str = "PCM_16",
    file_format: str = "WAV",
    plots: bool = False,
  ) -> dict[str, pathlib.Path]:
    """Separates ``path`` into ``out_dir/<stem>.<ext>``, streaming: memory does not grow.

    With ``plots`` also writes ``out_dir/plot.png``. The folder appears whole or not at all:
    the files are written into a temporary folder beside it which is renamed at the end
    (replacing an older result). Returns ``{stem: file}`` (and ``{"plot": file}``).
    """
    info = self._checked_info(path)
    out_dir = pathlib.Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    extension = {"WAV": "wav", "FLAC": "flac", "OGG": "ogg"}[file_format]
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    names = self.output_names
    writers = []
    plotter = separation_plots.PlotAccumulator(
      names, self.model.num_outputs, info.sample_rate_hz, info.frames
    )
    try:
      for stem in names:
        writers.append(
          soundfile.SoundFile(
            staging / f"{stem}.{extension}",
            "w",
            samplerate=info.sample_rate_hz,
            channels=info.channels,
            subtype=subtype,
            format=file_format,
          )
        )
      blocks = self.iter_blocks(
        self._file_reader(path), info.frames, info.channels, info.sample_rate_hz, name=str(path)
      )
      for block in blocks:  # [N, C, n]
        stems = self._name_outputs(block)
        for writer, stem in zip(writers, names):
          data = stems[stem].T
          if subtype.startswith("PCM") or subtype == "VORBIS":
            # libsndfile wraps around instead of clipping integer overflows.
            data = np.clip(data, -1.0, 1.0)
          writer.write(data)
        if plots:
          plotter.push(block, stems)
      for writer in writers:
        writer.close()
      if plots:
        plotter.save(staging / "plot.png", title=track_name(path))
      if out_dir.exists():
        old = pathlib.Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old.", dir=out_dir.parent))
        os.replace(out_dir, old / out_dir.name)
        os.replace(staging, out_dir)
        shutil.rmtree(old)
      else:
        os.replace(staging, out_dir)
    except BaseException:
      for writer in writers:
        writer.close()
      shutil.rmtree(staging, ignore_errors=True)
      raise
    written = {stem: out_dir / f"{stem}.{extension}" for stem in names}
    if plots:
      written["plot"] = out_dir / "plot.png"
    return written

  # ---- the streaming core -------------------------------------------------------------------

  def num_segments(self, num_frames: int, sample_rate_hz: int) -> int:
    """How many segments a song of ``num_frames`` at ``sample_rate_hz`` is cut into."""
    model_frames = self._model_frames(num_frames, sample_rate_hz)
    return max(1, math.ceil(max(model_frames - self.overlap_frames, 0) / self.stride_frames))

  def read_block_frames(self, sample_rate_hz: int) -> int:
    """Frames read from the input at a time (about one stride at the input's rate)."""
    return max(1, math.ceil(self.stride_frames * sample_rate_hz / self.model.sample_rate_hz))

  def iter_blocks(
    self,
    read_frames: FrameReader,
    num_frames: int,
    channels: int,
    sample_rate_hz: int,
    *,
    name: str = "<input>",
    segment_callback: SegmentCallback | None = None,
  ) -> Iterator[np.ndarray]:
    """Yields the separated song in consecutive blocks ``[N, C, n]`` at ``sample_rate_hz``.

    ``read_frames(start, n)`` must return ``[C, n]`` float32. The blocks add up to
    ``num_frames`` frames and, frame by frame, their outputs sum to the input.
    """
    self._check_channels(channels, name)
    if num_frames <= 0:
      raise SeparationError(f"{name}: empty (no audio frames)")
    model_rate = self.model.sample_rate_hz
    resampling = sample_rate_hz != model_rate
    input_fifo = _Fifo(channels)  # input at the file's rate, for the final consistency step
    to_model = soxr.ResampleStream(sample_rate_hz, model_rate, channels, dtype="float32")
    num_outputs = self.model.num_outputs
    from_model = soxr.ResampleStream(
      model_rate, sample_rate_hz, num_outputs * channels, dtype="float32"
    )

    def model_rate_input() -> Iterator[np.ndarray]:
      read_size = self.read_block_frames(sample_rate_hz)
      for start in range(0, num_frames, read_size):
        n = min(read_size, num_frames - start)
        block = np.asarray(read_frames(start, n), np.float32)
        if block.shape != (channels, n):
          raise SeparationError(
            f"{name}: truncated: expected {n} frames at frame {start}, got shape {block.shape}"
          )
        if not np.isfinite(block).all():
          bad = start + int(np.argmax(~np.isfinite(block).all(axis=0)))
          raise SeparationError(f"{name}: contains NaN or infinite samples (first at frame {bad})")
        input_fifo.push(block)
        if resampling:
          yield to_model.resample_chunk(np.ascontiguousarray(block.T), last=False).T
        else:
          yield block
      if resampling:
        yield to_model.resample_chunk(np.zeros((0, channels), np.float32), last=True).T

    total_model_frames = self._model_frames(num_frames, sample_rate_hz)
    model_blocks = self._separate_model_rate(
      model_rate_input(), channels, total_model_frames, name, segment_callback
    )
    emitted = 0
    pending = _Fifo(num_outputs * channels)  # outputs at the file's rate, not yet handed on
    # Above the model's Nyquist: the residual is shared by what the outputs contain.
    extender = None
    if sample_rate_hz > model_rate:
      extender = bandwidth.BandExtender(num_outputs, channels, sample_rate_hz, model_rate)
    for model_block in model_blocks:  # [N, C, n] at the model's rate
      if resampling:
        flat = model_block.reshape(num_outputs * channels, -1).T
        pending.push(from_model.resample_chunk(np.ascontiguousarray(flat), last=False).T)
      else:
        pending.push(model_block.reshape(num_outputs * channels, -1))
      while pending.frames and emitted < num_frames:
        n = min(pending.frames, num_frames - emitted)
        block = self._finish_block(pending.pop(n), input_fifo.pop(n), channels, extender)
        if block.shape[-1]:
          yield block
        emitted += n
    if resampling:
      empty = np.zeros((0, num_outputs * channels), np.float32)
      pending.push(from_model.resample_chunk(empty, last=True).T)
    if emitted < num_frames:
      # The resampler may come up a frame or two short; pop() pads with zeros and the
      # consistency step gives the missing input to the outputs equally.
      n = num_frames - emitted
      block = self._finish_block(pending.pop(n), input_fifo.pop(n), channels, extender)
      if block.shape[-1]:
        yield block
    if extender is not None:
      block = extender.finish()  # the frames it held back
      if block.shape[-1]:
        yield block

  def _finish_block(self, flat_outputs, mixture, channels, extender) -> np.ndarray:
    """Mixture consistency at the file's rate: by content above the model's Nyquist (the
    extender's frames come out a little later), else equally (the resampling residual)."""
    outputs = flat_outputs.reshape(self.model.num_outputs, channels, -1)
    if extender is not None:
      return extender.push(outputs, mixture)
    return share_residual(outputs, mixture).astype(np.float32)

  def _separate_model_rate(
    self, chunks, channels, total_model_frames, name, segment_callback
  ) -> Iterator[np.ndarray]:
    """Segments -> model -> alignment -> overlap-add, all at the model's rate."""
    progress = None
    if self.progress:
      from tqdm import tqdm

      progress = tqdm(
        total=self.num_segments(total_model_frames, self.model.sample_rate_hz),
        desc=pathlib.Path(name).name[:40],
        unit="seg",
        leave=False,
      )
    num_outputs = self.model.num_outputs
    tail = np.zeros((num_outputs, channels, self.overlap_frames), np.float32)
    tail_weight = np.zeros(self.overlap_frames, np.float32)
    buffer = _Fifo(channels)
    emitted = 0
    position = 0  # model-rate frame at which the next segment starts
    first = True  # no segment cut yet
    first_segment = True  # no segment added yet

    def segments() -> Iterator[np.ndarray]:
      nonlocal position, first
      for chunk in chunks:
        buffer.push(chunk)
        while buffer.frames >= self.segment_frames:
          yield buffer.peek(self.segment_frames)
          buffer.pop(self.stride_frames)
          position += self.stride_frames
          first = False
      # The rest: zero-padded segments until the song is covered.
      while first or position + self.overlap_frames < total_model_frames:
        yield buffer.peek(self.segment_frames)
        buffer.pop(self.stride_frames)
        position += self.stride_frames
        first = False

    try:
      for batch in _batched(segments(), self.batch_size):
        separated = self._run_model(np.stack(batch), channels, segment_callback)
        for mixture, estimates in zip(batch, separated):
          estimates = share_residual(estimates, mixture)
          if not first_segment:
            order = best_permutation(tail / tail_weight, estimates[..., : self.overlap_frames])
            estimates = estimates[order]
          weighted = estimates * self._weights
          weighted[..., : self.overlap_frames] += tail
          weight = self._weights.copy()
          weight[: self.overlap_frames] += tail_weight
          n = min(self.stride_frames, total_model_frames - emitted)
          if n > 0:
            yield weighted[..., :n] / weight[:n]
            emitted += n
          tail = weighted[..., self.stride_frames :]
          tail_weight = weight[self.stride_frames :]
          first_segment = False
          if progress is not None:
            progress.update(1)
      n = total_model_frames - emitted
      if n > 0:
        yield tail[..., :n] / tail_weight[:n]
    finally:
      if progress is not None:
        progress.close()

  def _run_model(self, segments, channels, segment_callback) -> np.ndarray:
    """``segments [n, C, L]`` (input channels) -> ``[n, N, C, L]``."""
    n = segments.shape[0]
    model_channels = self.model.channels
    if model_channels == channels:
      model_input = segments
    elif model_channels == 1:
      model_input = segments.mean(axis=1, keepdims=True)
    else:  # a stereo (or wider) model on a mono file
      model_input = np.repeat(segments, model_channels, axis=1)
    if n < self.batch_size:  # one compiled shape: pad the batch
      pad = np.zeros((self.batch_size - n, *model_input.shape[1:]), np.float32)
      model_input = np.concatenate([model_input, pad])
    estimates, masks = self.model.apply_fn(model_input, want_masks=segment_callback is not None)
    estimates = np.asarray(estimates, np.float32)[:n]
    if estimates.shape[1:] != (self.model.num_outputs, model_channels, self.segment_frames):
      raise RuntimeError(
        f"model returned estimates of shape {estimates.shape}, expected "
        f"[{n}, {self.model.num_outputs}, {model_channels}, {self.segment_frames}]"
      )
    if segment_callback is not None:
      segment_callback(estimates, None if masks is None else np.asarray(masks)[:n])
    if model_channels == channels:
      return estimates
    if model_channels == 1:
      return np.stack([spread_over_channels(e[:, 0], s) for e, s in zip(estimates, segments)])
    return estimates.mean(axis=2, keepdims=True)

  # ---- helpers -------------------------------------------------------------------------------

  def _model_frames(self, num_frames: int, sample_rate_hz: int) -> int:
    # What a resampler yields for num_frames at sample_rate_hz (soxr rounds up).
    return math.ceil(num_frames * self.model.sample_rate_hz / sample_rate_hz)

  def _check_channels(self, channels: int, name: str) -> None:
    model_channels = self.model.channels
    if channels < 1 or (model_channels != 1 and channels != model_channels and channels != 1):
      raise SeparationError(
        f"{name}: unsupported channel count {channels} for a {model_channels}-channel model"
      )

  def _checked_info(self, path):
    info = audio.audio_info(path)  # raises AudioError naming the file
    if info.frames <= 0:
      raise SeparationError(f"{path}: empty (no audio frames)")
    self._check_channels(info.channels, str(path))
    return info

  @staticmethod
  def _file_reader(path) -> FrameReader:
    def read_frames(start, n):
      return audio.read_audio(path, start_frame=start, num_frames=n)

    return read_frames

  def _name_outputs(self, outputs: np.ndarray) -> dict[str, np.ndarray]:
    if self.model.stem_map is not None:
      return self.model.stem_map.combine(outputs)
    return {f"output_{i}": outputs[i] for i in range(outputs.shape[0])}


def _batched(items: Iterator[np.ndarray], size: int) -> Iterator[list[np.ndarray]]:
  batch = []
  for item in items:
    batch.append(item)
    if len(batch) == size:
      yield batch
      batch = []
  if batch:
    yield batch


# --------------------------------------------------------------------------------------------
# CLI


def get_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
    prog="python -m trackformer_jax.separate",
    description="Separate songs into the model's outputs (or stems, with a stem map).",
  )
  parser.add_argument("tracks", nargs="+", metavar="TRACK", help="audio files (wav, flac, ogg)")
  parser.add_argument("--model", required=True, help="exported folder or training workdir")
  parser.add_argument("--checkpoint", default="best", help="workdir checkpoint: best|latest|STEP")
  export_lib.add_weights_argument(parser)
  parser.add_argument("-o", "--out", default="separated", help="output root (default separated)")
  parser.add_argument("--segment", type=float, default=None, metavar="SECONDS")
  parser.add_argument("--overlap", type=float, default=0.25)
  parser.add_argument("--batch-size", type=int, default=4, help="segments per model call")
  fmt = parser.add_argument_group("output format (default 16-bit wav)")
  fmt.add_argument("--flac", action="store_true", help="write FLAC")
  fmt.add_argument("--int24", action="store_true", help="24-bit integer samples")
  fmt.add_argument("--float32", action="store_true", help="32-bit float samples (wav only)")
  fmt.add_argument("--ogg", action="store_true", help="write Ogg Vorbis (lossy)")
  parser.add_argument("--plots", action="store_true", help="one PNG per track")
  parser.add_argument("-j", "--jobs", type=int, default=1, help="tracks separated in parallel")
  parser.add_argument("--no-progress", action="store_true")
  return parser


def _say(message: str, stream) -> None:
  # The worker thread may be drawing a progress bar; tqdm.write clears it first, so a
  # message never lands on the end of a bar's line.
  from tqdm import tqdm

  tqdm.write(message, file=stream)


def track_name(path: str | os.PathLike) -> str:
  """The output folder's name: the file's stem, or its folder's name for a MUSDB-style
  ``<song>/mixture.wav`` (every such song would otherwise be called "mixture")."""
  # Normalised first: in "../mixture.wav" the folder's name is "..", which would send the
  # output to the root's parent and replace that whole folder.
  path = pathlib.Path(os.path.abspath(path))
  name = path.stem
  if name == "mixture" and path.parent.name:
    name = path.parent.name
  if name in ("", ".", ".."):  # "..wav" has the stem ".": the output root itself
    name = path.name
  return name


def _output_format(args) -> tuple[str, str]:
  if args.ogg:
    if args.flac or args.int24 or args.float32:
      raise SeparationError("--ogg (Vorbis) excludes --flac, --int24 and --float32")
    return "VORBIS", "OGG"
  if args.int24 and args.float32:
    raise SeparationError("--int24 and --float32 exclude each other")
  if args.flac and args.float32:
    raise SeparationError("FLAC cannot hold float samples: use --int24 or 16 bit with --flac")
  subtype = "PCM_24" if args.int24 else "FLOAT" if args.float32 else "PCM_16"
  return subtype, "FLAC" if args.flac else "WAV"


def main(argv: Sequence[str] | None = None) -> int:
  args = get_parser().parse_args(argv)
  try:
    subtype, file_format = _output_format(args)
    checkpoint = export_lib.parse_checkpoint(args.checkpoint)
    model = export_lib.load_model(args.model, checkpoint=checkpoint, weights=args.weights)
    separator = Separator(
      model,
      segment_seconds=args.segment,
      overlap=args.overlap,
      batch_size=args.batch_size,
      progress=not args.no_progress and args.jobs == 1,
    )
  except (ValueError, argparse.ArgumentTypeError) as e:
    print(f"separate: {e}", file=sys.stderr)
    return 2

  root = pathlib.Path(args.out) / model.name

  def separate_one(track: str) -> str:
    out_dir = root / track_name(track)
    paths = separator.separate_to_folder(
      track, out_dir, subtype=subtype, file_format=file_format, plots=args.plots
    )
    return f"{track} -> {out_dir}/ ({', '.join(p.name for p in paths.values())})"

  failures = 0
  # Two tracks with one name would write one folder; the later ones are refused, not lost.
  first_with_name: dict[str, str] = {}
  unique = []
  for track in args.tracks:
    other = first_with_name.setdefault(track_name(track), track)
    if other != track:
      failures += 1
      print(f"separate: {track}: same name as {other}; would overwrite it", file=sys.stderr)
    else:
      unique.append(track)
  with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
    futures = {pool.submit(separate_one, t): t for t in unique}
    for future in futures:  # in the order given, so messages are reproducible
      track = futures[future]
      try:
        _say(future.result(), sys.stdout)
      except Exception as e:  # noqa: BLE001 - one bad track must not stop the others
        failures += 1
        message = str(e) if track in str(e) else f"{track}: {type(e).__name__}: {e}"
        if isinstance(e, (ValueError, OSError)):
          message = str(e) if track in str(e) else f"{track}: {e}"
        _say(f"separate: {message}", sys.stderr)
  if failures:
    print(f"separate: {failures} of {len(args.tracks)} tracks failed", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
