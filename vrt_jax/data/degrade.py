"""Degradations that make LQ clips from GT clips, as the VRT training data were made.

All functions take channels-last float clips in [0, 1], (T, H, W, C) or any (..., H, W, C).
- BI: MATLAB `imresize(x, 1/scale, 'bicubic')` with antialiasing (Vimeo-90K, REDS, Vid4 LR sets).
- BD: KAIR's `generate_LR_Vimeo90K_BD.m`: `fspecial('gaussian', 12, 1.6)`, `imfilter(...,
  'replicate')`, then rows and columns scale/2, scale/2 + scale, ... (1-based).
- Noise: additive Gaussian, not clipped, with the noise level appended as a channel (DAVIS
  training).
- Motion blur: the mean of consecutive sharp sub-frames (how GoPro and DVD were recorded).
"""

from __future__ import annotations

import math

import numpy as np

from vrt_jax.data.imresize import imresize

BD_SIGMA = 1.6


def bicubic_downsample(clip: np.ndarray, scale: int) -> np.ndarray:
  """BI degradation: (..., H, W, C) -> (..., ceil(H / scale), ceil(W / scale), C)."""
  return imresize(clip, 1.0 / scale, axes=(-3, -2))


def _gaussian_taps(sigma: float) -> np.ndarray:
  # fspecial('gaussian', n, sigma) with MATLAB's even size n = 2 * ceil(3 * sigma) + 2 is the
  # outer product of this normalised 1-D kernel, sampled at -(n - 1) / 2 ... (n - 1) / 2.
  n = 2 * math.ceil(3 * sigma) + 2
  x = np.arange(n, dtype=np.float64) - (n - 1) / 2.0
  taps = np.exp(-(x * x) / (2.0 * sigma * sigma))
  return taps / taps.sum()


def _blur_subsample_axis(x: np.ndarray, axis: int, taps: np.ndarray, scale: int) -> np.ndarray:
  # imfilter centres an even kernel of n taps at tap n // 2 (0-based), so output i reads input
  # i - n // 2 + 1 ... i + n // 2 (replicate-padded). Only the kept outputs are computed.
  n = len(taps)
  before, after = n // 2 - 1, n // 2
  x = np.moveaxis(x, axis, -1)
  length = x.shape[-1]
  pad = [(0, 0)] * (x.ndim - 1) + [(before, after)]
  padded = np.pad(x, pad, mode="edge")
  keep = np.arange(scale // 2 - 1, length - scale // 2, scale)  # MATLAB s/2 : s : end - s/2
  window = keep[:, None] + np.arange(n)[None, :]               # indices into `padded`
  out = np.einsum("...kn,n->...k", padded[..., window], taps.astype(x.dtype))
  return np.moveaxis(out, -1, axis)


def blur_downsample(clip: np.ndarray, scale: int, sigma: float = BD_SIGMA) -> np.ndarray:
  """BD degradation: Gaussian blur (sigma 1.6, 12x12, replicate) then every `scale`-th pixel.

  (..., H, W, C) -> (..., H // scale, W // scale, C) for H, W multiples of `scale`.
  """
  if scale < 2 or scale % 2:
    raise ValueError(f"BD degradation needs an even scale >= 2 (MATLAB's scale/2 offset), "
                     f"got {scale}.")
  clip = np.asarray(clip)
  dtype = np.float32 if clip.dtype == np.float32 else np.float64
  clip = clip.astype(dtype, copy=False)
  taps = _gaussian_taps(sigma)
  out = _blur_subsample_axis(clip, clip.ndim - 3, taps, scale)
  return _blur_subsample_axis(out, clip.ndim - 2, taps, scale)


def add_noise(clip: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
  """Adds Gaussian noise of std `sigma` (in [0, 1] units, i.e. level / 255), not clipped.

  (..., H, W, C) -> (..., H, W, C + 1): the last channel is the noise map, constant `sigma`, which
  VRT's non-blind denoiser takes as input.
  """
  clip = np.asarray(clip, np.float32)
  noisy = clip + rng.normal(0.0, sigma, size=clip.shape).astype(np.float32)
  noise_map = np.full(clip.shape[:-1] + (1,), sigma, np.float32)
  return np.concatenate([noisy, noise_map], axis=-1)


def motion_blur(subframes: np.ndarray, sub_per_frame: int) -> tuple[np.ndarray, np.ndarray]:
  """Averages groups of consecutive sharp sub-frames into blurred frames (GoPro's recipe).

  Args:
    subframes: (T * sub_per_frame, H, W, C) sharp frames of a high frame-rate clip.
    sub_per_frame: sub-frames averaged into one blurred frame.

  Returns:
    (blurred, sharp): both (T, H, W, C); `sharp` is the middle sub-frame of each group, the
    ground truth that the blurred frame pairs with.
  """
  subframes = np.asarray(subframes)
  if sub_per_frame < 1 or subframes.shape[0] % sub_per_frame:
    raise ValueError(f"motion_blur needs a number of sub-frames divisible by {sub_per_frame}, "
                     f"got {subframes.shape[0]}.")
  groups = subframes.reshape((-1, sub_per_frame) + subframes.shape[1:])
  return groups.mean(axis=1), groups[:, sub_per_frame // 2]


def _gray(x: np.ndarray) -> np.ndarray:
  return (0.2989 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2])[..., None]


def _shift_hue(x: np.ndarray, shift: float) -> np.ndarray:
  # RGB -> HSV, rotate hue, HSV -> RGB, vectorised (torchvision's formulas).
  r, g, b = x[..., 0], x[..., 1], x[..., 2]
  maxc, minc = x.max(-1), x.min(-1)
  v, delta = maxc, maxc - minc
  s = np.where(maxc > 0, delta / np.where(maxc > 0, maxc, 1), 0)
  d = np.where(delta > 0, delta, 1)
  rc, gc, bc = (maxc - r) / d, (maxc - g) / d, (maxc - b) / d
  h = np.where(maxc == r, bc - gc, np.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
  h = np.where(delta > 0, (h / 6.0) % 1.0, 0.0)
  h = (h + shift) % 1.0
  i = np.floor(h * 6.0)
  f = h * 6.0 - i
  p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
  i = i.astype(np.int64) % 6
  choices = [np.stack(c, -1) for c in ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v),
                                       (v, p, q))]
  return np.select([(i == k)[..., None] for k in range(6)], choices).astype(x.dtype)


def color_jitter(clip: np.ndarray, rng: np.random.Generator, strength: float = 0.05
                 ) -> np.ndarray:
  """torchvision ColorJitter(s, s, s, s) with one draw for the whole clip (KAIR's VFI recipe).

  Brightness, contrast, saturation and hue change in a random order with factors from
  U[1 - s, 1 + s] (hue shift U[-s, s]); contrast blends each frame with its mean grey level.
  clip: (..., H, W, 3) in [0, 1] -> same shape, clipped to [0, 1].
  """
  x = np.asarray(clip, np.float32)
  for op in rng.permutation(4):
    if op == 0:
      x = np.clip(x * rng.uniform(1 - strength, 1 + strength), 0, 1)
    elif op == 1:
      f = rng.uniform(1 - strength, 1 + strength)
      mean = _gray(x).mean(axis=(-3, -2, -1), keepdims=True)
      x = np.clip(f * x + (1 - f) * mean, 0, 1)
    elif op == 2:
      f = rng.uniform(1 - strength, 1 + strength)
      x = np.clip(f * x + (1 - f) * _gray(x), 0, 1)
    else:
      x = _shift_hue(x, rng.uniform(-strength, strength))
  return x.astype(np.float32)
