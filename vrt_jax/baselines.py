"""Classical restorers, tuned on training clips, as the yardstick for a trained VRT.

One entry point for every task: `methods_for(degradation)` lists the standard non-learned methods
of the task VRT is trained on (keyed by `data.degradation`), `restore(name, lq, setting, sigma=,
scale=)` runs one. Each method has one knob grid (`Method.grid`); `tune` picks each method's best
setting by mean PSNR on clips the caller provides (training clips, never the clips the comparison
is reported on) and `score` measures the tuned methods on held-out clips with the same PSNR / SSIM
as VRT's validation (8-bit, RGB, mean over frames).

Denoising ('noise': additive Gaussian noise of known level sigma), each applied frame by frame and,
where it extends to video, over space and time at once:

  gaussian / gaussian_st   Gaussian smoothing (per frame / over a space-time neighbourhood)
  median / median_st       median filter (per frame / over a space-time box)
  tv / tv_st               total-variation denoising (Chambolle)
  wavelet                  wavelet shrinkage (BayesShrink or VisuShrink, YCbCr)
  nlm / nlm_st             non-local means (2-D patches in the frame / 3-D patches that also
                           search the neighbouring frames: the classical motion-robust video NLM)

Super-resolution ('bi': MATLAB bicubic downsampling; 'bd': Gaussian blur of sigma 1.6, then every
scale-th pixel), per frame:

  bicubic                  MATLAB imresize bicubic upscaling (the "Bicubic" row of VRT's tables)
  lanczos                  Lanczos upscaling (2, 3 or 4 lobes)
  bicubic_wiener ('bd')    bicubic, then Wiener deconvolution with the true Gaussian kernel
  bicubic_rl ('bd')        bicubic, then Richardson-Lucy deconvolution with the true kernel

Deblurring ('blur') has none: the synthetic and recorded blur (the mean of moving sub-frames) has
no single known kernel for Wiener or Richardson-Lucy to invert. `methods_for` returns {} for it
and for frame interpolation.

Clips are (T, H, W, 3) float arrays in [0, 1]; sigma is the noise std in the same units
(level / 255); super-resolution maps (T, h, w, 3) to (T, scale * h, scale * w, 3).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from scipy import ndimage
from skimage import restoration

from vrt_jax import metrics
from vrt_jax.data import degrade
from vrt_jax.data.imresize import imresize

Clip = np.ndarray


@dataclasses.dataclass(frozen=True)
class Method:
  """A classical method: `apply(lq, setting, sigma, scale) -> clip`, tried over `grid`.

  degradations: the `data.degradation` values it restores; denoisers read sigma, upscalers scale.
  """
  name: str
  label: str
  apply: Callable[[Clip, Any, float | None, int | None], Clip]
  grid: tuple[Any, ...]
  degradations: tuple[str, ...]


def _per_frame(f: Callable[[np.ndarray], np.ndarray], clip: Clip) -> Clip:
  return np.stack([f(frame) for frame in clip])


def _gaussian(clip: Clip, sigma: float, s: float) -> Clip:
  return ndimage.gaussian_filter(clip, (0, s, s, 0), mode="reflect")


def _gaussian_st(clip: Clip, sigma: float, st: tuple[float, float]) -> Clip:
  return ndimage.gaussian_filter(clip, (st[0], st[1], st[1], 0), mode="reflect")


def _median(clip: Clip, sigma: float, k: int) -> Clip:
  return ndimage.median_filter(clip, size=(1, k, k, 1), mode="reflect")


def _median_st(clip: Clip, sigma: float, k: tuple[int, int]) -> Clip:
  return ndimage.median_filter(clip, size=(k[0], k[1], k[1], 1), mode="reflect")


def _tv(clip: Clip, sigma: float, w: float) -> Clip:
  return _per_frame(
      lambda f: restoration.denoise_tv_chambolle(f, weight=w * sigma, channel_axis=-1), clip)


def _tv_st(clip: Clip, sigma: float, w: float) -> Clip:
  return restoration.denoise_tv_chambolle(clip, weight=w * sigma, channel_axis=-1)


def _wavelet(clip: Clip, sigma: float, setting: tuple[str, str]) -> Clip:
  method, wavelet = setting
  return _per_frame(lambda f: restoration.denoise_wavelet(
      f, sigma=sigma, wavelet=wavelet, method=method, mode="soft", convert2ycbcr=True,
      rescale_sigma=True, channel_axis=-1), clip)


def _nlm(clip: Clip, sigma: float, h: float) -> Clip:
  # h is relative to sigma; skimage subtracts 2 sigma^2 from patch distances when sigma is given.
  return _per_frame(lambda f: restoration.denoise_nl_means(
      f, patch_size=5, patch_distance=6, h=h * sigma, sigma=sigma, fast_mode=True,
      channel_axis=-1), clip)


def _nlm_st(clip: Clip, sigma: float, h: float) -> Clip:
  # 5x5x5 patches compared within +-3 frames / pixels: motion up to ~3 px per frame is searched.
  return restoration.denoise_nl_means(clip, patch_size=5, patch_distance=3, h=h * sigma,
                                      sigma=sigma, fast_mode=True, channel_axis=-1)


def _denoiser(name: str, label: str, f: Callable[[Clip, float, Any], Clip],
              grid: tuple[Any, ...]) -> Method:
  return Method(name, label, lambda clip, setting, sigma, scale: f(clip, sigma, setting), grid,
                ("noise",))


DENOISERS: dict[str, Method] = {m.name: m for m in (
    _denoiser("gaussian", "Gaussian", _gaussian, (0.5, 0.75, 1.0, 1.5, 2.0)),
    _denoiser("median", "median", _median, (3, 5, 7)),
    _denoiser("tv", "total variation", _tv, (0.4, 0.6, 0.8, 1.0, 1.5, 2.0)),
    _denoiser("wavelet", "wavelet", _wavelet,
              tuple((m, w) for m in ("BayesShrink", "VisuShrink") for w in ("db1", "db2", "sym4"))),
    _denoiser("nlm", "non-local means", _nlm, (0.2, 0.3, 0.4, 0.6, 0.8)),
    _denoiser("gaussian_st", "Gaussian, space-time", _gaussian_st,
              tuple((t, s) for t in (0.5, 1.0, 2.0) for s in (0.75, 1.0, 1.5))),
    _denoiser("median_st", "median, space-time", _median_st, ((3, 3), (3, 5), (5, 3), (5, 5))),
    _denoiser("tv_st", "total variation, space-time", _tv_st, (0.4, 0.6, 0.8, 1.0, 1.5, 2.0)),
    _denoiser("nlm_st", "non-local means, space-time", _nlm_st,
              (0.15, 0.2, 0.25, 0.3, 0.4, 0.5)),
)}


# --------------------------------------------------------------------- super-resolution


def _bicubic(clip: Clip, setting: Any, sigma: float | None, scale: int) -> Clip:
  # MATLAB imresize(x, scale, 'bicubic'): VRT's "Bicubic" rows. No knob.
  return imresize(clip, scale, axes=(-3, -2))


def _lanczos_matrix(in_length: int, scale: int, lobes: int) -> np.ndarray:
  """(in * scale, in) Lanczos-`lobes` upscaling weights; pixel centres as imresize (and PIL)
  place them, edge pixels replicated, each row normalised to sum 1."""
  out = (np.arange(in_length * scale) + 0.5) / scale - 0.5  # Output centres in input pixels.
  taps = np.floor(out)[:, None] + np.arange(-lobes + 1, lobes + 1)[None, :]
  x = out[:, None] - taps
  w = np.sinc(x) * np.sinc(x / lobes) * (np.abs(x) < lobes)
  w /= w.sum(axis=1, keepdims=True)
  matrix = np.zeros((len(out), in_length))
  np.add.at(matrix, (np.repeat(np.arange(len(out)), taps.shape[1]),
                     np.clip(taps, 0, in_length - 1).astype(int).ravel()), w.ravel())
  return matrix


def _lanczos(clip: Clip, lobes: int, sigma: float | None, scale: int) -> Clip:
  for axis in (1, 2):
    matrix = _lanczos_matrix(clip.shape[axis], scale, lobes).astype(clip.dtype)
    clip = np.moveaxis(np.tensordot(clip, matrix, axes=([axis], [1])), -1, axis)
  return clip


def bd_psf(sigma: float = degrade.BD_SIGMA) -> np.ndarray:
  """The BD blur at the GT's resolution as an odd, centred 2-D kernel (sum 1).

  degrade.blur_downsample filters with fspecial('gaussian', 12, 1.6), whose centre falls between
  pixels, then keeps pixels 1, 5, 9, ... (scale 4): the kept samples sit at GT positions 1.5,
  5.5, ..., exactly where imresize's x4 upscaling puts the LR pixel centres. After bicubic
  upscaling the remaining blur is therefore the centred Gaussian (plus the bicubic kernel's own
  smoothing, which the tuned knobs absorb).
  """
  r = math.ceil(3 * sigma)
  x = np.arange(-r, r + 1, dtype=np.float64)
  g = np.exp(-(x * x) / (2 * sigma * sigma))
  psf = np.outer(g, g)
  return psf / psf.sum()


_PAD = 16  # Reflected border around each frame: FFT deconvolution wraps around, RL zero-pads.


def _wiener(clip: Clip, balance: float, sigma: float | None, scale: int) -> Clip:
  up = np.clip(_bicubic(clip, None, None, scale), 0, 1).astype(np.float64)
  padded = np.pad(up, ((0, 0), (_PAD, _PAD), (_PAD, _PAD), (0, 0)), mode="symmetric")
  psf = bd_psf()
  out = np.empty_like(padded)
  for t in range(padded.shape[0]):
    for c in range(padded.shape[-1]):
      out[t, ..., c] = restoration.wiener(padded[t, ..., c], psf, balance, clip=False)
  return out[:, _PAD:-_PAD, _PAD:-_PAD]


def _richardson_lucy(clip: Clip, num_iter: int, sigma: float | None, scale: int) -> Clip:
  up = np.clip(_bicubic(clip, None, None, scale), 0, 1).astype(np.float64)
  padded = np.pad(up, ((0, 0), (_PAD, _PAD), (_PAD, _PAD), (0, 0)), mode="symmetric")
  # One call for the clip: a (1, k, k, 1) kernel blurs each frame and channel on its own.
  out = restoration.richardson_lucy(padded, bd_psf()[None, :, :, None], num_iter=num_iter,
                                    clip=False)
  return out[:, _PAD:-_PAD, _PAD:-_PAD]


UPSCALERS: dict[str, Method] = {m.name: m for m in (
    Method("bicubic", "bicubic (MATLAB imresize)", _bicubic, (None,), ("bi", "bd")),
    Method("lanczos", "Lanczos", _lanczos, (2, 3, 4), ("bi", "bd")),
    Method("bicubic_wiener", "bicubic + Wiener, true kernel", _wiener,
           (0.01, 0.03, 0.1, 0.3, 1.0), ("bd",)),
    Method("bicubic_rl", "bicubic + Richardson-Lucy, true kernel", _richardson_lucy,
           (5, 10, 15, 25), ("bd",)),
)}

METHODS: dict[str, Method] = {**DENOISERS, **UPSCALERS}
DEGRADATIONS = ("bi", "bd", "blur", "noise", "vfi", "none")  # pipeline.DEGRADATIONS


def methods_for(degradation: str) -> dict[str, Method]:
  """The classical methods of a task, by name; {} where there are none (deblurring, frame
  interpolation, 'none')."""
  if degradation not in DEGRADATIONS:
    raise ValueError(f"Unknown degradation {degradation!r}; choose from {DEGRADATIONS}.")
  return {n: m for n, m in METHODS.items() if degradation in m.degradations}


def restore(name: str, lq: Clip, setting: Any, *, sigma: float | None = None,
            scale: int | None = None) -> Clip:
  """Applies method `name` with `setting` to an RGB clip, as float32.

  Denoisers: (T, H, W, 3) -> (T, H, W, 3), sigma (noise std, level / 255) required. Upscalers:
  (T, h, w, 3) -> (T, scale * h, scale * w, 3), scale >= 2 required.
  """
  if name not in METHODS:
    raise ValueError(f"Unknown classical method {name!r}; choose from {', '.join(METHODS)}.")
  lq = np.asarray(lq, np.float32)
  if lq.ndim != 4 or lq.shape[-1] != 3:
    raise ValueError(f"Expected an RGB clip (T, H, W, 3), got shape {lq.shape}.")
  method = METHODS[name]
  if name in DENOISERS:
    if sigma is None:
      raise ValueError(f"{name!r} is a denoiser: give the noise level sigma.")
    sigma = float(sigma)
  else:
    if scale is None or int(scale) < 2:
      raise ValueError(f"{name!r} upscales: give the integer scale >= 2, got {scale!r}.")
    scale = int(scale)
  return np.asarray(method.apply(lq, setting, sigma, scale), np.float32)


def denoise(name: str, noisy: Clip, sigma: float, setting: Any) -> Clip:
  """Applies denoiser `name` with `setting` to a noisy clip (T, H, W, 3) -> (T, H, W, 3) float32."""
  if name not in DENOISERS:
    raise ValueError(f"Unknown classical denoiser {name!r}; choose from {', '.join(DENOISERS)}.")
  return restore(name, noisy, setting, sigma=sigma)


def clip_psnr(out: Clip, gt: Clip) -> float:
  """Mean per-frame RGB PSNR after 8-bit rounding (VRT's test metric)."""
  return float(np.mean([metrics.psnr(metrics.to_uint8(o), metrics.to_uint8(g))
                        for o, g in zip(out, gt, strict=True)]))


def clip_ssim(out: Clip, gt: Clip) -> float:
  """Mean per-frame RGB SSIM (MATLAB style) after 8-bit rounding."""
  return float(np.mean([metrics.ssim(metrics.to_uint8(o), metrics.to_uint8(g))
                        for o, g in zip(out, gt, strict=True)]))


# (LQ RGB clip, ground truth, sigma): sigma is the noise std for denoising, None otherwise.
Sample = tuple[Clip, Clip, float | None]


def tune(samples: Sequence[Sample], names: Sequence[str] | None = None, *,
         scale: int | None = None) -> dict[str, Any]:
  """Each method's setting with the best mean PSNR on `samples` (training clips only).

  names: the methods to tune (default: the denoisers, or with `scale` the upscalers of 'bd').
  """
  if not samples:
    raise ValueError("tune needs at least one (lq, gt, sigma) training clip.")
  if names is None:
    names = list(DENOISERS) if scale is None else list(methods_for("bd"))
  best = {}
  for name in names:
    if name not in METHODS:
      raise ValueError(f"Unknown classical method {name!r}; choose from {', '.join(METHODS)}.")
    grid = METHODS[name].grid
    if len(grid) == 1:
      best[name] = grid[0]
      continue
    scores = [np.mean([clip_psnr(restore(name, x, setting, sigma=s, scale=scale), gt)
                       for x, gt, s in samples]) for setting in grid]
    best[name] = grid[int(np.argmax(scores))]
  return best


def score(samples: Sequence[Sample], settings: dict[str, Any], *, scale: int | None = None,
          outputs: dict[str, list[Clip]] | None = None) -> dict[str, dict[str, float]]:
  """PSNR / SSIM of each tuned method on `samples`: {name: {'psnr', 'ssim'}}, means over clips.

  outputs: if given, filled with each method's restored clips.
  """
  result = {}
  for name, setting in settings.items():
    outs = [restore(name, x, setting, sigma=s, scale=scale) for x, _, s in samples]
    if outputs is not None:
      outputs[name] = outs
    result[name] = {"psnr": float(np.mean([clip_psnr(o, gt) for o, (_, gt, _) in
                                           zip(outs, samples, strict=True)])),
                    "ssim": float(np.mean([clip_ssim(o, gt) for o, (_, gt, _) in
                                           zip(outs, samples, strict=True)]))}
  return result


def best(scores: dict[str, dict[str, float]]) -> str:
  """The name of the method with the highest PSNR in a `score` result."""
  return max(scores, key=lambda name: scores[name]["psnr"])
