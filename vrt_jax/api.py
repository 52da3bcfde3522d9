"""One call from weights to restored frames.

    import vrt_jax
    restorer = vrt_jax.load("006_VRT_videodeblurring_GoPro")  # or a .pth, folder, workdir
    sharp = restorer(frames)          # (T, H, W, 3) or (B, T, H, W, 3), uint8 or float in [0, 1]

`load` resolves the weights as `vrt-restore --weights` does (`restore_lib.load_restorer`: a released
model name is downloaded, verified and converted once); calling the restorer runs the official
tiled test procedure (`inference.restore`) with the official tile of the model (or
`restore_lib.choose_tiling`'s default), on the fast path: one ahead-of-time compilation per tile
shape (`memory.CompiledPerShape`), kept across calls.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from vrt_jax import inference, metrics, restore_lib


class VideoRestorer:
  """A loaded model: `restorer(frames, sigma=None)` returns the restored frames.

  Attributes: model (the VRT module), variables, preset (the released model name or None),
  scale, last_tiling (how the last call was tiled, one line).
  """

  def __init__(self, loaded: restore_lib.Restorer, *, tile: Sequence[int] | None = None,
               tile_overlap: Sequence[int] | None = None, fast: bool = True):
    self._loaded = loaded
    self.model = loaded.model
    self.variables = loaded.variables
    self.preset = loaded.preset
    self.spec = inference.ModelSpec.from_model(self.model)
    self.scale = self.spec.scale
    self.tile = None if tile is None else tuple(int(t) for t in tile)
    self.tile_overlap = None if tile_overlap is None else tuple(int(o) for o in tile_overlap)
    if fast:
      self._apply = inference.make_apply_fn(self.model)
    else:
      import jax

      self._apply = jax.jit(lambda variables, x: self.model.apply(variables, x))
    self.last_tiling = ""

  @property
  def is_denoiser(self) -> bool:
    """Non-blind denoising: the noise level is an input (`sigma`)."""
    return self.spec.in_channels == self.model.in_chans + 1

  def __call__(self, frames: Any, *, sigma: float | None = None,
               tile: Sequence[int] | None = None, tile_overlap: Sequence[int] | None = None,
               progress: bool = False) -> np.ndarray:
    """Restores a clip.

    Args:
      frames: (T, H, W, 3) or (B, T, H, W, 3); uint8 (0-255) or float in [0, 1].
      sigma: the input's noise level on the 0-255 scale, for a non-blind denoiser (default: what
        the weights' source says, e.g. a training workdir's validation noise level).
      tile, tile_overlap: (T, H, W), 0 = whole dimension; default: as given to `load`, else the
        model's official tiling (restore_lib.choose_tiling).
      progress: show a progress bar of tiles.

    Returns:
      The restored clip with the input's rank and dtype kind: uint8 for uint8 input (rounded as
      the metrics and the CLI's frames are), float32 otherwise; H and W times the model's scale.
    """
    x = np.asarray(frames)
    if x.ndim not in (4, 5):
      raise ValueError(f"frames must be (T, H, W, C) or (B, T, H, W, C); got shape {x.shape}")
    single = x.ndim == 4
    if single:
      x = x[None]
    is_uint8 = x.dtype == np.uint8
    if is_uint8:
      x = x.astype(np.float32) / np.float32(255)
    elif not np.issubdtype(x.dtype, np.floating):
      raise ValueError(f"frames must be uint8 (0-255) or float in [0, 1]; got dtype {x.dtype}")
    x = x.astype(np.float32)
    if x.shape[-1] != self.model.in_chans:
      raise ValueError(f"frames must have {self.model.in_chans} channels; got {x.shape[-1]}")
    level = restore_lib.noise_level(self._loaded, sigma)
    if level:
      x = np.concatenate([x, np.full(x.shape[:-1] + (1,), level / 255, np.float32)], axis=-1)
    elif sigma:
      raise ValueError("sigma is only for non-blind denoising models; this one takes no noise "
                       "level")
    _, t, h, w, _ = x.shape
    tile, tile_overlap = restore_lib.choose_tiling(
        self._loaded.model_kwargs, t, h, w, budget_bytes=None,
        tile=tile or self.tile, tile_overlap=tile_overlap or self.tile_overlap,
        preset=self.preset)
    self.last_tiling = inference.describe_tiling(self.model, (t, h, w), tile, tile_overlap)
    out = inference.restore(self.model, self.variables, x, tile=tile, tile_overlap=tile_overlap,
                            apply_fn=self._apply, progress=progress)
    if is_uint8:
      out = metrics.to_uint8(out)
    return out[0] if single else out


def load(weights: str, *, preset: str | None = None, config: str | None = None,
         tile: Sequence[int] | None = None, tile_overlap: Sequence[int] | None = None,
         fast: bool = True, progress: bool = True, dtype: str | None = None,
         matmul_precision: str | None = None) -> VideoRestorer:
  """A restorer for `weights`: a released model name (e.g. "006_VRT_videodeblurring_GoPro",
  downloaded, verified and converted once), an official `.pth`, a converted folder or a
  training workdir.

  preset / config: the model, where the source does not name it (a renamed .pth).
  tile / tile_overlap: default tiling of the calls (else the model's official one).
  fast: compile once per tile shape ahead of time and keep it (memory.CompiledPerShape);
    False uses plain `jax.jit(model.apply)` per call.
  progress: a progress bar while downloading weights.
  dtype: compute precision, "float32" or "bfloat16" (parameters stay float32); default: the
    weights' own (float32 for released models).
  matmul_precision: of float32 matmuls and convolutions on a TPU or GPU, "default" (one
    bfloat16 pass on a TPU), "high" or "highest"; default: the weights' own ("default").
  """
  from vrt_jax import runtime

  with runtime.quiet_logs_while():  # Orbax's INFO lines (and a harmless warning) per read.
    loaded = restore_lib.load_restorer(preset=preset, weights=str(weights), config=config,
                                       progress=progress, dtype=dtype,
                                       matmul_precision=matmul_precision)
  return VideoRestorer(loaded, tile=tile, tile_overlap=tile_overlap, fast=fast)
