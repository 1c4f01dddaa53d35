"""The streaming separator: songs of any length, with a trained (exported) separator.

The Python API and the CLI (``python -m trackformer_jax.separate``, built on this) are
described in ``separate``.

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

import dataclasses
import math
import os
import pathlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import numpy as np
import soxr

from trackformer_jax import audio, bandwidth, interrupts, stem_files
from trackformer_jax.stem_files import track_name
from trackformer_jax.stitching import (
  Fifo,
  batched,
  best_permutation,
  overlap_add_weights,
  share_residual,
  spread_over_channels,
)

if TYPE_CHECKING:
  from trackformer_jax.inference.loading import LoadedModel

__all__ = ["FrameReader", "SegmentCallback", "SeparationError", "SeparationResult", "Separator"]
__all__ += ["track_name"]

# read_frames(start, num_frames) -> float32 [C, num_frames]
FrameReader = Callable[[int, int], np.ndarray]
# segment_callback(estimates [n, N, C, T], masks [n, ...] or None) for the n real segments
SegmentCallback = Callable[[np.ndarray, np.ndarray | None], None]


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
    progress_label: put before the song's name on its bar (which model, say).
    checkpoint: which checkpoint of a workdir (``best`` | ``latest`` | step).
    weights: a workdir's ``ema`` (its moving average where the run kept one) or ``raw``.
  """

  def __init__(
    self,
    model: LoadedModel | str | os.PathLike,
    *,
    segment_seconds: float | None = None,
    overlap: float = 0.25,
    batch_size: int = 4,
    progress: bool = False,
    progress_label: str = "",
    checkpoint: str | int = "best",
    weights: str = "ema",
  ):
    # Imported here (it imports jax), so that importing this module stays light.
    from trackformer_jax.inference import loading

    if not isinstance(model, loading.LoadedModel):
      model = loading.load_model(model, checkpoint=checkpoint, weights=weights)
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
    self.progress_label = progress_label
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
    """Separates ``mixture`` sampled at ``sample_rate_hz``.

    ``mixture`` is ``[channels, time]`` (``audio.read_audio``'s layout), or ``[time]`` for
    mono. soundfile's ``[time, channels]`` (``soundfile.read``) is refused, not guessed at:
    an array with more rows than columns raises ``SeparationError`` saying to pass
    ``mixture.T``.
    """
    mixture = np.asarray(mixture, np.float32)
    if mixture.ndim == 1:
      mixture = mixture[None]
    if mixture.ndim != 2:
      raise SeparationError(f"{name}: expected audio [channels, time], got shape {mixture.shape}")
    if mixture.shape[0] > mixture.shape[1]:
      raise SeparationError(
        f"{name}: expected audio [channels, time], got shape {mixture.shape}, which looks "
        "like soundfile's [time, channels]: pass mixture.T"
      )

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
    return SeparationResult(outputs, self.name_outputs(outputs), sample_rate_hz)

  def separate_file(
    self, path: str | os.PathLike, *, segment_callback: SegmentCallback | None = None
  ) -> SeparationResult:
    """Separates an audio file, keeping the whole result in memory (see separate_to_folder)."""
    info = self.checked_info(path)
    blocks = self.iter_blocks(
      self.file_reader(path),
      info.frames,
      info.channels,
      info.sample_rate_hz,
      name=str(path),
      segment_callback=segment_callback,
    )
    outputs = np.concatenate(list(blocks), axis=-1)
    return SeparationResult(outputs, self.name_outputs(outputs), info.sample_rate_hz)

  def separate_to_folder(
    self,
    path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    subtype: str = "PCM_16",
    file_format: str = "WAV",
    plots: bool = False,
    clip_mode: str = "rescale",
    mp3_bitrate_kbps: int = 320,
    stop: interrupts.StopRequest | None = None,
    warn: stem_files.Warn | None = None,
  ) -> dict[str, pathlib.Path]:
    """Separates ``path`` into ``out_dir/<stem>.<ext>``, streaming: memory does not grow.

    With ``plots`` also writes ``out_dir/plot.png``. The folder appears whole or not at all:
    the files are written into a temporary folder beside it which is renamed at the end
    (replacing an older result). ``file_format``: WAV, FLAC, OGG or MP3. Stems beyond ±1
    in a format that cannot hold them are rescaled (all by one factor) or clamped, per
    ``clip_mode``, with a warning to ``warn`` (default ``warnings.warn``). A set ``stop``
    ends it between blocks (``interrupts.Interrupted``), leaving nothing behind. Returns
    ``{stem: file}`` (and ``{"plot": file}``).
    """
    return stem_files.write_stems(
      self,
      path,
      out_dir,
      subtype=subtype,
      file_format=file_format,
      plots=plots,
      clip_mode=clip_mode,
      mp3_bitrate_kbps=mp3_bitrate_kbps,
      stop=stop,
      warn=warn,
    )

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
    input_fifo = Fifo(channels)  # input at the file's rate, for the final consistency step
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
    pending = Fifo(num_outputs * channels)  # outputs at the file's rate, not yet handed on
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
        desc=" ".join(filter(None, [self.progress_label, pathlib.Path(name).name]))[:60],
        unit="seg",
        leave=False,
      )
    num_outputs = self.model.num_outputs
    tail = np.zeros((num_outputs, channels, self.overlap_frames), np.float32)
    tail_weight = np.zeros(self.overlap_frames, np.float32)
    buffer = Fifo(channels)
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
      for batch in batched(segments(), self.batch_size):
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

  def checked_info(self, path) -> audio.AudioInfo:
    """The file's info; raises naming the file if it cannot be separated."""
    info = audio.audio_info(path)  # raises AudioError naming the file
    if info.frames <= 0:
      raise SeparationError(f"{path}: empty (no audio frames)")
    self._check_channels(info.channels, str(path))
    return info

  @staticmethod
  def file_reader(path) -> FrameReader:
    """``read_frames(start, n)`` for a file, at its own rate."""

    def read_frames(start, n):
      return audio.read_audio(path, start_frame=start, num_frames=n)

    return read_frames

  # The names older callers use.
  _checked_info = checked_info
  _file_reader = file_reader

  def name_outputs(self, outputs: np.ndarray) -> dict[str, np.ndarray]:
    """``[N, ...]`` outputs -> ``{stem: [...]}`` (summed per stem with a stem map)."""
    if self.model.stem_map is not None:
      return self.model.stem_map.combine(outputs)
    return {f"output_{i}": outputs[i] for i in range(outputs.shape[0])}
