"""PSNR and SSIM exactly as the official VRT test script computes them.

`main_test_vrt.py` clamps outputs and ground truth to [0, 1], scales by 255 and rounds to uint8,
then calls `utils_image.calculate_psnr` / `calculate_ssim` with no border crop. The Y-channel
variants convert with `bgr2ycbcr(img.astype(float32) / 255) * 255` (BT.601, float, not rounded).
SSIM is the MATLAB-style one: 11x11 Gaussian window with sigma 1.5, "valid" region, averaged over
channels. Images here are RGB; the reference converts to BGR first and its Y weights are in BGR
order, so the same Y results from the RGB weights (65.481, 128.553, 24.966).
"""

from __future__ import annotations

import math

import numpy as np

_Y_WEIGHTS_RGB = np.array([65.481, 128.553, 24.966], np.float64)


def to_uint8(img01: np.ndarray) -> np.ndarray:
  """[0, 1] float image or clip -> uint8 in [0, 255]: clamp, x255, round (half to even)."""
  x = np.asarray(img01)
  if not np.issubdtype(x.dtype, np.floating):
    raise ValueError(f"to_uint8 expects floating point values in [0, 1]; got dtype {x.dtype}")
  if not np.isfinite(x).all():
    raise ValueError("to_uint8 got NaN or Inf values")
  x = np.clip(x.astype(np.float32), 0.0, 1.0)
  return (x * np.float32(255.0)).round().astype(np.uint8)


def rgb_to_y(img: np.ndarray) -> np.ndarray:
  """uint8 RGB (H, W, 3) -> float32 Y in [16, 235], as the reference's float `bgr2ycbcr` * 255."""
  x = img.astype(np.float32) / np.float32(255.0)
  x = x * np.float32(255.0)
  y = (np.dot(x, _Y_WEIGHTS_RGB) / 255.0 + 16.0) / 255.0  # float64, as numpy promotes there
  return y.astype(np.float32) * np.float32(255.0)


def _check_pair(img1: np.ndarray, img2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  img1, img2 = np.asarray(img1), np.asarray(img2)
  for name, img in (("img1", img1), ("img2", img2)):
    if img.dtype != np.uint8:
      raise ValueError(
          f"{name} must be a uint8 image in [0, 255] (dtype {img.dtype} given); convert [0, 1] "
          "floats with metrics.to_uint8")
    if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] not in (1, 3)):
      raise ValueError(f"{name} must be (H, W), (H, W, 1) or (H, W, 3); got shape {img.shape}")
  if img1.shape != img2.shape:
    raise ValueError(f"images must have the same shape; got {img1.shape} and {img2.shape}")
  if min(img1.shape[:2]) < 11:
    raise ValueError(f"images must be at least 11x11 for SSIM; got {img1.shape[:2]}")
  return img1, img2


def _channels(img1: np.ndarray, img2: np.ndarray, y_channel: bool):
  if y_channel:
    if img1.ndim != 3 or img1.shape[2] != 3:
      raise ValueError(f"y_channel needs RGB (H, W, 3) images; got shape {img1.shape}")
    return rgb_to_y(img1), rgb_to_y(img2)
  return img1, img2


def psnr(img1: np.ndarray, img2: np.ndarray, *, y_channel: bool = False) -> float:
  """PSNR in dB between uint8 images (H, W[, C]); inf for identical images."""
  img1, img2 = _channels(*_check_pair(img1, img2), y_channel)
  mse = np.mean((img1.astype(np.float64) - img2.astype(np.float64)) ** 2)
  if mse == 0:
    return float("inf")
  return 20 * math.log10(255.0 / math.sqrt(mse))


def _gaussian_kernel(size: int = 11, sigma: float = 1.5) -> np.ndarray:
  """cv2.getGaussianKernel(size, sigma): normalised samples of a Gaussian, float64."""
  x = np.arange(size, dtype=np.float64) - (size - 1) / 2
  k = np.exp(-(x**2) / (2 * sigma**2))
  return k / k.sum()


def _filter_valid(img: np.ndarray, k: np.ndarray) -> np.ndarray:
  """Valid-region correlation with the separable window outer(k, k)."""
  n = len(k)
  h, w = img.shape
  rows = sum(k[i] * img[i:h - n + 1 + i] for i in range(n))
  return sum(k[j] * rows[:, j:w - n + 1 + j] for j in range(n))


def _ssim_2d(img1: np.ndarray, img2: np.ndarray) -> float:
  c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
  img1, img2 = img1.astype(np.float64), img2.astype(np.float64)
  k = _gaussian_kernel()
  mu1, mu2 = _filter_valid(img1, k), _filter_valid(img2, k)
  mu1_sq, mu2_sq, mu1_mu2 = mu1**2, mu2**2, mu1 * mu2
  sigma1_sq = _filter_valid(img1**2, k) - mu1_sq
  sigma2_sq = _filter_valid(img2**2, k) - mu2_sq
  sigma12 = _filter_valid(img1 * img2, k) - mu1_mu2
  ssim_map = ((2 * mu1_mu2 + c1) * (2 * sigma12 + c2)) / (
      (mu1_sq + mu2_sq + c1) * (sigma1_sq + sigma2_sq + c2))
  return float(ssim_map.mean())


def ssim(img1: np.ndarray, img2: np.ndarray, *, y_channel: bool = False) -> float:
  """MATLAB-style SSIM between uint8 images (H, W[, C]), averaged over channels."""
  img1, img2 = _channels(*_check_pair(img1, img2), y_channel)
  if img1.ndim == 2:
    return _ssim_2d(img1, img2)
  return float(np.mean([_ssim_2d(img1[..., c], img2[..., c]) for c in range(img1.shape[2])]))


def frame_metrics(output: np.ndarray, gt: np.ndarray) -> dict[str, float]:
  """PSNR / SSIM on RGB and Y of one frame; output and gt are (H, W, 3) floats in [0, 1]."""
  out8, gt8 = to_uint8(output), to_uint8(gt)
  return dict(psnr=psnr(out8, gt8), ssim=ssim(out8, gt8),
              psnr_y=psnr(out8, gt8, y_channel=True), ssim_y=ssim(out8, gt8, y_channel=True))


def clip_metrics(output: np.ndarray, gt: np.ndarray) -> dict[str, float]:
  """Per-frame metrics averaged over the frames of a clip (T, H, W, 3), as the reference does."""
  output, gt = np.asarray(output), np.asarray(gt)
  if output.shape != gt.shape or output.ndim != 4:
    raise ValueError(f"output and gt must be equal (T, H, W, 3) clips; got {output.shape} and "
                     f"{gt.shape}")
  per_frame = [frame_metrics(o, g) for o, g in zip(output, gt, strict=True)]
  return {key: sum(m[key] for m in per_frame) / len(per_frame) for key in per_frame[0]}
