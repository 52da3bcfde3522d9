"""Classical video denoisers, tuned on training clips, as the yardstick for a trained VRT.

The standard non-learned methods for additive Gaussian noise of known level sigma, each applied
frame by frame ("spatial") and, where it extends to video, over space and time at once:

  gaussian / gaussian_st   Gaussian smoothing (per frame / over a space-time neighbourhood)
  median / median_st       median filter (per frame / over a space-time box)
  tv / tv_st               total-variation denoising (Chambolle)
  wavelet                  wavelet shrinkage (BayesShrink or VisuShrink, YCbCr)
  nlm / nlm_st             non-local means (2-D patches in the frame / 3-D patches that also
                           search the neighbouring frames: the classical motion-robust video NLM)

Every method has one knob grid (`Method.grid`, relative to sigma where that is the natural unit).
`tune` picks each method's best setting by mean PSNR on clips the caller provides: training clips,
never the clips the comparison is reported on. `score` then measures the tuned methods on
held-out clips with the same PSNR / SSIM as VRT's validation (8-bit, RGB, mean over frames).

Clips are (T, H, W, 3) float arrays in [0, 1]; sigma is the noise std in the same units
(level / 255).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from scipy import ndimage
from skimage import restoration

from vrt_jax import metrics

Clip = np.ndarray


@dataclasses.dataclass(frozen=True)
class Method:
  """A classical denoiser: `apply(noisy, sigma, setting) -> clip`, tried over `grid`."""
  name: str
  label: str
  apply: Callable[[Clip, float, Any], Clip]
  grid: tuple[Any, ...]


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


DENOISERS: dict[str, Method] = {m.name: m for m in (
    Method("gaussian", "Gaussian", _gaussian, (0.5, 0.75, 1.0, 1.5, 2.0)),
    Method("median", "median", _median, (3, 5, 7)),
    Method("tv", "total variation", _tv, (0.4, 0.6, 0.8, 1.0, 1.5, 2.0)),
    Method("wavelet", "wavelet", _wavelet,
           tuple((m, w) for m in ("BayesShrink", "VisuShrink") for w in ("db1", "db2", "sym4"))),
    Method("nlm", "non-local means", _nlm, (0.2, 0.3, 0.4, 0.6, 0.8)),
    Method("gaussian_st", "Gaussian, space-time", _gaussian_st,
           tuple((t, s) for t in (0.5, 1.0, 2.0) for s in (0.75, 1.0, 1.5))),
    Method("median_st", "median, space-time", _median_st, ((3, 3), (3, 5), (5, 3), (5, 5))),
    Method("tv_st", "total variation, space-time", _tv_st, (0.4, 0.6, 0.8, 1.0, 1.5, 2.0)),
    Method("nlm_st", "non-local means, space-time", _nlm_st, (0.15, 0.2, 0.25, 0.3, 0.4, 0.5)),
)}


def denoise(name: str, noisy: Clip, sigma: float, setting: Any) -> Clip:
  """Applies method `name` with `setting` to a noisy clip (T, H, W, 3) -> (T, H, W, 3) float32."""
  if name not in DENOISERS:
    raise ValueError(f"Unknown classical denoiser {name!r}; choose from {', '.join(DENOISERS)}.")
  noisy = np.asarray(noisy, np.float32)
  if noisy.ndim != 4 or noisy.shape[-1] != 3:
    raise ValueError(f"Expected an RGB clip (T, H, W, 3), got shape {noisy.shape}.")
  return np.asarray(DENOISERS[name].apply(noisy, float(sigma), setting), np.float32)


def clip_psnr(out: Clip, gt: Clip) -> float:
  """Mean per-frame RGB PSNR after 8-bit rounding (VRT's test metric)."""
  return float(np.mean([metrics.psnr(metrics.to_uint8(o), metrics.to_uint8(g))
                        for o, g in zip(out, gt, strict=True)]))


def clip_ssim(out: Clip, gt: Clip) -> float:
  """Mean per-frame RGB SSIM (MATLAB style) after 8-bit rounding."""
  return float(np.mean([metrics.ssim(metrics.to_uint8(o), metrics.to_uint8(g))
                        for o, g in zip(out, gt, strict=True)]))


Sample = tuple[Clip, Clip, float]  # (noisy RGB clip, ground truth, sigma)


def tune(samples: Sequence[Sample], names: Sequence[str] | None = None) -> dict[str, Any]:
  """Each method's setting with the best mean PSNR on `samples` (training clips only)."""
  if not samples:
    raise ValueError("tune needs at least one (noisy, gt, sigma) training clip.")
  best = {}
  for name in names or DENOISERS:
    method = DENOISERS[name]
    scores = [np.mean([clip_psnr(denoise(name, x, s, setting), gt) for x, gt, s in samples])
              for setting in method.grid]
    best[name] = method.grid[int(np.argmax(scores))]
  return best


def score(samples: Sequence[Sample], settings: dict[str, Any]) -> dict[str, dict[str, float]]:
  """PSNR / SSIM of each tuned method on `samples`: {name: {'psnr', 'ssim'}}, means over clips."""
  result = {}
  for name, setting in settings.items():
    outs = [denoise(name, x, s, setting) for x, _, s in samples]
    result[name] = {"psnr": float(np.mean([clip_psnr(o, gt) for o, (_, gt, _) in
                                           zip(outs, samples, strict=True)])),
                    "ssim": float(np.mean([clip_ssim(o, gt) for o, (_, gt, _) in
                                           zip(outs, samples, strict=True)]))}
  return result


def best(scores: dict[str, dict[str, float]]) -> str:
  """The name of the method with the highest PSNR in a `score` result."""
  return max(scores, key=lambda name: scores[name]["psnr"])
