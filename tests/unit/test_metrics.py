"""Metrics agree with the official utils_image formulas on random and real images."""

import math

import cv2
import numpy as np
import pytest
import skimage.data

from vrt_jax import metrics


# Independent re-derivation: the reference utilities of main_test_vrt.py written out literally
# (BGR order, cv2 Gaussian kernel and filter2D), applied the way the test script applies them.
def ref_psnr(img1, img2):
  mse = np.mean((img1.astype(np.float64) - img2.astype(np.float64)) ** 2)
  return float("inf") if mse == 0 else 20 * math.log10(255.0 / math.sqrt(mse))


def ref_ssim_2d(img1, img2):
  C1, C2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
  img1, img2 = img1.astype(np.float64), img2.astype(np.float64)
  kernel = cv2.getGaussianKernel(11, 1.5)
  window = np.outer(kernel, kernel.transpose())
  mu1 = cv2.filter2D(img1, -1, window)[5:-5, 5:-5]
  mu2 = cv2.filter2D(img2, -1, window)[5:-5, 5:-5]
  sigma1_sq = cv2.filter2D(img1**2, -1, window)[5:-5, 5:-5] - mu1**2
  sigma2_sq = cv2.filter2D(img2**2, -1, window)[5:-5, 5:-5] - mu2**2
  sigma12 = cv2.filter2D(img1 * img2, -1, window)[5:-5, 5:-5] - mu1 * mu2
  m = ((2 * mu1 * mu2 + C1) * (2 * sigma12 + C2)) / ((mu1**2 + mu2**2 + C1) *
                                                     (sigma1_sq + sigma2_sq + C2))
  return m.mean()


def ref_ssim(img1, img2):
  if img1.ndim == 2:
    return ref_ssim_2d(img1, img2)
  return np.array([ref_ssim_2d(img1[:, :, i], img2[:, :, i]) for i in range(3)]).mean()


def ref_bgr2ycbcr(img):
  in_img_type = img.dtype
  img = img.copy()
  if in_img_type != np.uint8:
    img *= 255.
  rlt = np.dot(img, [24.966, 128.553, 65.481]) / 255.0 + 16.0
  rlt /= 255.
  return rlt.astype(in_img_type)


def ref_metrics(out_rgb01, gt_rgb01):
  """main_test_vrt.py: clamp, RGB->BGR, x255, round, uint8; then psnr/ssim on RGB and Y."""
  def quant(x):
    x = np.clip(x.astype(np.float32), 0, 1)[:, :, [2, 1, 0]]
    return (x * 255.0).round().astype(np.uint8)
  img, img_gt = quant(out_rgb01), quant(gt_rgb01)
  res = dict(psnr=ref_psnr(img, img_gt), ssim=ref_ssim(img, img_gt))
  img_y = ref_bgr2ycbcr(img.astype(np.float32) / 255.) * 255.
  gt_y = ref_bgr2ycbcr(img_gt.astype(np.float32) / 255.) * 255.
  res.update(psnr_y=ref_psnr(img_y, gt_y), ssim_y=ref_ssim(img_y, gt_y))
  return res


def _pairs():
  rng = np.random.default_rng(0)
  a = rng.random((48, 61, 3), dtype=np.float32)
  yield "random", a, np.clip(a + 0.1 * rng.standard_normal(a.shape, dtype=np.float32), -0.2, 1.2)
  for name in ("astronaut", "coffee"):
    gt = getattr(skimage.data, name)()[:160, :200].astype(np.float32) / 255
    noisy = gt + 0.05 * rng.standard_normal(gt.shape, dtype=np.float32)
    yield name, noisy, gt


@pytest.mark.parametrize("name,out,gt", list(_pairs()),
                         ids=lambda v: v if isinstance(v, str) else "")
def test_metrics_match_reference_formulas(name, out, gt):
  want = ref_metrics(out, gt)
  got = metrics.frame_metrics(out, gt)
  assert abs(got["psnr"] - want["psnr"]) < 1e-6
  assert abs(got["psnr_y"] - want["psnr_y"]) < 1e-6
  assert abs(got["ssim"] - want["ssim"]) < 1e-7
  assert abs(got["ssim_y"] - want["ssim_y"]) < 1e-7
  # Sanity of the scale: a degraded image has finite PSNR well below 60 dB and SSIM < 1.
  assert 10 < got["psnr"] < 60 and 0 < got["ssim"] < 1


def test_y_channel_uses_rgb_order_and_float_y():
  rng = np.random.default_rng(1)
  img = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
  y = metrics.rgb_to_y(img)
  assert y.dtype == np.float32
  manual = 16 + (65.481 * img[..., 0] + 128.553 * img[..., 1] + 24.966 * img[..., 2]) / 255
  np.testing.assert_allclose(y, manual, atol=1e-4)
  # Swapping R and B changes Y: the order matters.
  assert not np.allclose(metrics.rgb_to_y(img[..., ::-1]), y)


def test_gaussian_kernel_equals_cv2():
  np.testing.assert_allclose(metrics._gaussian_kernel(), cv2.getGaussianKernel(11, 1.5)[:, 0],
                             rtol=0, atol=1e-15)


def test_to_uint8_rounds_and_clamps():
  x = np.array([-0.5, 0.0, 0.5 / 255, 1.5 / 255, 0.999, 1.0, 7.0], np.float32)
  np.testing.assert_array_equal(metrics.to_uint8(x), [0, 0, 0, 2, 255, 255, 255])


def test_identical_images_and_clip_average():
  img = skimage.data.chelsea()[:64, :64]
  assert metrics.psnr(img, img) == float("inf")
  assert metrics.ssim(img, img) == pytest.approx(1.0)
  rng = np.random.default_rng(2)
  gt = rng.random((3, 32, 32, 3), dtype=np.float32)
  out = gt + 0.05 * rng.standard_normal(gt.shape, dtype=np.float32)
  clip = metrics.clip_metrics(out, gt)
  frames = [ref_metrics(o, g) for o, g in zip(out, gt, strict=True)]
  for key in clip:
    assert abs(clip[key] - np.mean([f[key] for f in frames])) < 1e-6


def test_bad_inputs_raise():
  a = np.zeros((16, 16, 3), np.uint8)
  with pytest.raises(ValueError, match="uint8"):
    metrics.psnr(a.astype(np.float32) / 255, a)
  with pytest.raises(ValueError, match="same shape"):
    metrics.ssim(a, np.zeros((16, 17, 3), np.uint8))
  with pytest.raises(ValueError, match="floating point"):
    metrics.to_uint8(a)
  with pytest.raises(ValueError, match="NaN"):
    metrics.to_uint8(np.full((4, 4), np.nan, np.float32))
  with pytest.raises(ValueError, match="equal"):
    metrics.clip_metrics(np.zeros((2, 16, 16, 3)), np.zeros((3, 16, 16, 3)))
