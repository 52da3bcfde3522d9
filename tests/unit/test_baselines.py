"""Classical denoisers: each removes noise, tuning follows the noise, space-time uses time."""

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from vrt_jax import baselines


def smooth_clip(t=4, size=24, shift=0.0, seed=0):
  """A smooth colour pattern moving `shift` pixels per frame: (t, size, size, 3) in [0.1, 0.9]."""
  rng = np.random.default_rng(seed)
  freq = rng.uniform(0.15, 0.35, size=(3, 2))
  phase = rng.uniform(0, 2 * np.pi, size=3)
  y, x = np.mgrid[:size, :size].astype(np.float64)
  frames = []
  for i in range(t):
    xs = x + shift * i
    frames.append(np.stack([0.5 + 0.4 * np.sin(f[0] * y + f[1] * xs + p)
                            for f, p in zip(freq, phase, strict=True)], -1))
  return np.asarray(frames, np.float32)


def noisy(clip, sigma, seed=1):
  return clip + np.random.default_rng(seed).normal(0, sigma, clip.shape).astype(np.float32)


@pytest.mark.parametrize("name", sorted(baselines.DENOISERS))
def test_every_method_at_its_best_setting_removes_noise(name):
  gt = smooth_clip()
  x = noisy(gt, 0.1)
  setting = baselines.tune([(x, gt, 0.1)], [name])[name]
  out = baselines.denoise(name, x, 0.1, setting)
  assert out.shape == gt.shape and out.dtype == np.float32
  assert baselines.clip_psnr(out, gt) > baselines.clip_psnr(x, gt) + 3


@pytest.mark.parametrize("name", ["gaussian", "median", "gaussian_st"])
def test_tuning_smooths_more_for_more_noise(name):
  # Knobs in pixels (the others are relative to sigma, which already follows the noise).
  gt = smooth_clip(seed=2)
  grid = baselines.DENOISERS[name].grid
  low = baselines.tune([(noisy(gt, 0.02), gt, 0.02)], [name])[name]
  high = baselines.tune([(noisy(gt, 0.25), gt, 0.25)], [name])[name]
  if name == "gaussian_st":  # (temporal, spatial) sigmas: neither gets smaller.
    assert high[0] >= low[0] and high[1] >= low[1] and high != low
  else:  # Grids are ordered from gentle to strong.
    assert grid.index(high) > grid.index(low)


@pytest.mark.parametrize("spatial,space_time", [("gaussian", "gaussian_st"), ("nlm", "nlm_st"),
                                                ("tv", "tv_st"), ("median", "median_st")])
def test_space_time_methods_use_the_other_frames_of_a_static_scene(spatial, space_time):
  gt = smooth_clip(t=6, seed=3)
  samples = [(noisy(gt, 0.15, seed=s), gt, 0.15) for s in range(2)]
  settings = baselines.tune(samples[:1], [spatial, space_time])
  scores = baselines.score(samples[1:], settings)
  assert scores[space_time]["psnr"] > scores[spatial]["psnr"] + 0.5


def test_score_matches_an_independent_psnr_and_ssim():
  gt = smooth_clip(t=3, size=32, shift=1.0, seed=4)
  x = noisy(gt, 0.1)
  scores = baselines.score([(x, gt, 0.1)], {"gaussian": 1.0})
  out = baselines.denoise("gaussian", x, 0.1, 1.0)
  to8 = lambda a: np.round(np.clip(a, 0, 1) * 255).astype(np.uint8)
  psnr = np.mean([peak_signal_noise_ratio(to8(g), to8(o)) for o, g in zip(out, gt, strict=True)])
  ssim = np.mean([structural_similarity(to8(g), to8(o), channel_axis=-1, gaussian_weights=True,
                                        sigma=1.5, use_sample_covariance=False)
                  for o, g in zip(out, gt, strict=True)])
  assert scores["gaussian"]["psnr"] == pytest.approx(psnr, abs=1e-6)
  assert scores["gaussian"]["ssim"] == pytest.approx(ssim, abs=2e-3)
  assert baselines.best({"a": {"psnr": 20.0}, "b": {"psnr": 21.0}}) == "b"


@pytest.mark.parametrize("clip,match", [(np.zeros((4, 8, 8)), "RGB clip"),
                                        (np.zeros((4, 8, 8, 4)), "RGB clip")])
def test_bad_input_is_refused(clip, match):
  with pytest.raises(ValueError, match=match):
    baselines.denoise("gaussian", clip, 0.1, 1.0)
  with pytest.raises(ValueError, match="Unknown classical denoiser"):
    baselines.denoise("bm3d", np.zeros((2, 8, 8, 3)), 0.1, 1.0)
  with pytest.raises(ValueError, match="at least one"):
    baselines.tune([])
