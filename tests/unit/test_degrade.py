"""Degradations: BD, BI, noise, motion blur and colour jitter."""

import colorsys

import numpy as np
import pytest

from vrt_jax.data import degrade
from vrt_jax.data.imresize import imresize


def _matlab_bd_reference(img: np.ndarray, scale: int = 4, sigma: float = 1.6) -> np.ndarray:
  """KAIR's generate_LR_Vimeo90K_BD.m written out literally for one (H, W) channel.

  kernel = fspecial('gaussian', 2 * ceil(3 * sigma) + 2, sigma); imfilter(img, kernel,
  'replicate') (correlation, centre tap floor((n + 1) / 2) in 1-based terms); then
  img(scale/2 : scale : end - scale/2, same) in 1-based indices.
  """
  n = 2 * int(np.ceil(3 * sigma)) + 2
  c = (n - 1) / 2.0
  yy, xx = np.mgrid[0:n, 0:n] - c
  kernel = np.exp(-(xx ** 2 + yy ** 2) / (2 * sigma ** 2))
  kernel /= kernel.sum()
  centre = (n + 1) // 2 - 1                 # 0-based centre tap
  h, w = img.shape
  out = np.zeros_like(img)
  for i in range(h):
    for j in range(w):
      rows = np.clip(np.arange(n) + i - centre, 0, h - 1)
      cols = np.clip(np.arange(n) + j - centre, 0, w - 1)
      out[i, j] = np.sum(kernel * img[np.ix_(rows, cols)])
  keep_r = np.arange(scale // 2, h - scale // 2 + 1, scale) - 1   # 1-based -> 0-based
  keep_c = np.arange(scale // 2, w - scale // 2 + 1, scale) - 1
  return out[np.ix_(keep_r, keep_c)]


def test_blur_downsample_matches_literal_matlab_recipe():
  rng = np.random.default_rng(0)
  clip = rng.uniform(size=(2, 24, 20, 3))
  out = degrade.blur_downsample(clip, 4)
  assert out.shape == (2, 6, 5, 3)
  for t in range(2):
    for ch in range(3):
      np.testing.assert_allclose(out[t, :, :, ch], _matlab_bd_reference(clip[t, :, :, ch]),
                                 atol=1e-12)


def test_blur_downsample_keeps_constant_and_dtype():
  out = degrade.blur_downsample(np.full((1, 16, 16, 3), 0.25, np.float32), 4)
  assert out.dtype == np.float32
  np.testing.assert_allclose(out, 0.25, atol=1e-6)


def test_blur_downsample_rejects_odd_scale():
  with pytest.raises(ValueError, match="even scale"):
    degrade.blur_downsample(np.zeros((1, 9, 9, 3)), 3)


def test_bicubic_downsample_is_matlab_imresize_quarter():
  clip = np.random.default_rng(1).uniform(size=(2, 16, 24, 3)).astype(np.float32)
  out = degrade.bicubic_downsample(clip, 4)
  assert out.shape == (2, 4, 6, 3)
  np.testing.assert_allclose(out, imresize(clip, 0.25), atol=0)


def test_add_noise_appends_map_and_does_not_clip():
  rng = np.random.default_rng(0)
  clip = np.zeros((4, 32, 32, 3), np.float32)
  sigma = 30 / 255
  noisy = degrade.add_noise(clip, sigma, rng)
  assert noisy.shape == (4, 32, 32, 4) and noisy.dtype == np.float32
  np.testing.assert_array_equal(noisy[..., 3], np.float32(sigma))
  assert noisy[..., :3].min() < 0                       # not clipped at 0
  assert abs(noisy[..., :3].std() - sigma) < 0.05 * sigma


def test_motion_blur_averages_groups_and_pairs_middle_subframe():
  sub = np.arange(12, dtype=np.float32).reshape(12, 1, 1, 1) * np.ones((1, 2, 2, 3), np.float32)
  blurred, sharp = degrade.motion_blur(sub, 3)
  assert blurred.shape == sharp.shape == (4, 2, 2, 3)
  np.testing.assert_allclose(blurred[:, 0, 0, 0], [1, 4, 7, 10])
  np.testing.assert_allclose(sharp[:, 0, 0, 0], [1, 4, 7, 10])   # middle of 0,1,2 is 1
  with pytest.raises(ValueError, match="divisible"):
    degrade.motion_blur(sub, 5)


def test_color_jitter_hue_matches_colorsys():
  x = np.random.default_rng(0).uniform(size=(5, 7, 3)).astype(np.float32)
  got = degrade._shift_hue(x, 0.1)
  want = np.array([[colorsys.hsv_to_rgb((h + 0.1) % 1.0, s, v)
                    for h, s, v in (colorsys.rgb_to_hsv(*p) for p in row)]
                   for row in x.astype(np.float64)])
  np.testing.assert_allclose(got, want, atol=1e-6)


def test_color_jitter_is_seeded_bounded_and_mild():
  clip = np.random.default_rng(1).uniform(size=(3, 8, 8, 3)).astype(np.float32)
  a = degrade.color_jitter(clip, np.random.default_rng(5))
  b = degrade.color_jitter(clip, np.random.default_rng(5))
  np.testing.assert_array_equal(a, b)
  assert a.min() >= 0 and a.max() <= 1 and not np.array_equal(a, clip)
  assert np.abs(a - clip).max() < 0.2
  np.testing.assert_allclose(degrade.color_jitter(clip, np.random.default_rng(5), 0.0), clip,
                             atol=1e-6)
