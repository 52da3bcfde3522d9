"""Classical baselines: denoisers remove noise, tuning follows the noise, space-time uses time;
upscalers reach the GT size, deconvolving the true BD kernel beats bicubic, tuning sees only
training clips."""

import numpy as np
import pytest
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from configs import common
from vrt_jax import baselines, train_lib
from vrt_jax.data import degrade, pipeline
from vrt_jax.data.imresize import imresize


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


# --------------------------------------------------------------------- super-resolution


def bd_pair(seed, t=3, size=48):
  """A textured GT clip and its BD x4 LR: (t, 12, 12, 3) -> (t, 48, 48, 3)."""
  gt = smooth_clip(t=t, size=size, shift=0.7, seed=seed)
  return degrade.blur_downsample(gt, 4), gt


def test_methods_follow_the_degradation():
  assert set(baselines.methods_for("noise")) == set(baselines.DENOISERS)
  assert set(baselines.methods_for("bi")) == {"bicubic", "lanczos"}
  assert set(baselines.methods_for("bd")) == {"bicubic", "lanczos", "bicubic_wiener",
                                              "bicubic_rl"}
  assert baselines.methods_for("blur") == {} and baselines.methods_for("vfi") == {}
  with pytest.raises(ValueError, match="Unknown degradation"):
    baselines.methods_for("jpeg")


@pytest.mark.parametrize("name", sorted(baselines.methods_for("bd")))
def test_upscalers_return_the_gt_size(name):
  lq = np.random.default_rng(0).random((2, 6, 10, 3)).astype(np.float32)  # h != w
  setting = baselines.METHODS[name].grid[0]
  out = baselines.restore(name, lq, setting, scale=4)
  assert out.shape == (2, 24, 40, 3) and out.dtype == np.float32 and np.isfinite(out).all()


def test_tuned_bicubic_is_matlab_imresize():
  lq, gt = bd_pair(0)
  settings = baselines.tune([(lq, gt, None)], ["bicubic"], scale=4)
  out = baselines.restore("bicubic", lq, settings["bicubic"], scale=4)
  np.testing.assert_array_equal(out, imresize(lq, 4))


def test_lanczos3_is_pil_lanczos_away_from_the_border():
  lq = np.random.default_rng(1).random((1, 16, 16, 3)).astype(np.float32)
  out = baselines.restore("lanczos", lq, 3, scale=4)[0]
  pil = np.stack([np.asarray(Image.fromarray(lq[0, ..., c], mode="F").resize(
      (64, 64), Image.Resampling.LANCZOS)) for c in range(3)], -1)
  np.testing.assert_allclose(out[12:-12, 12:-12], pil[12:-12, 12:-12], atol=1e-5)


def test_deconvolution_with_the_true_kernel_beats_bicubic_on_bd():
  train, held_out = [bd_pair(seed) + (None,) for seed in (1, 2)]
  settings = baselines.tune([train], scale=4)  # Every 'bd' method.
  assert set(settings) == set(baselines.methods_for("bd"))
  scores = baselines.score([held_out], settings, scale=4)
  for name in ("bicubic_wiener", "bicubic_rl"):
    assert scores[name]["psnr"] > scores["bicubic"]["psnr"] + 0.5, scores
  assert scores["lanczos"]["psnr"] > scores["bicubic"]["psnr"], scores


def test_bd_kernel_is_the_degradation_after_bicubic_upscaling():
  # A single bright GT pixel: the BD LR upscaled by imresize peaks where the pixel was.
  gt = np.zeros((1, 48, 48, 3), np.float32)
  gt[0, 21, 25] = 1.0
  up = imresize(degrade.blur_downsample(gt, 4), 4)[0, ..., 0]
  assert np.unravel_index(np.argmax(up), up.shape) == (21, 25)
  psf = baselines.bd_psf()
  assert psf.shape[0] % 2 == 1 and psf.sum() == pytest.approx(1.0)


def test_sr_inputs_are_checked():
  lq = np.zeros((2, 8, 8, 3), np.float32)
  with pytest.raises(ValueError, match="scale"):
    baselines.restore("bicubic", lq, None)
  with pytest.raises(ValueError, match="noise level"):
    baselines.restore("nlm", lq, 0.3)
  with pytest.raises(ValueError, match="RGB clip"):
    baselines.restore("lanczos", np.zeros((8, 8, 3)), 3, scale=4)
  with pytest.raises(ValueError, match="Unknown classical method"):
    baselines.restore("srcnn", lq, None, scale=4)
  with pytest.raises(ValueError, match="Unknown classical method"):
    baselines.tune([(lq, lq, None)], ["srcnn"], scale=4)


def sr_config(**data):
  config = common.recipe(None, task="sr", scale=4)
  config.data.update({**dict(source="synthetic", layout="reds", degradation="bd", scale=4,
                             num_frames=2, gt_patch=32, synthetic_clips=4, num_workers=0,
                             val_clips=1, val_frames=2, val_size=32), **data})
  config.eval.baselines = True
  config.eval.baseline_tune_clips = 1
  return config


def test_sr_baselines_are_tuned_on_training_clips_only(monkeypatch, tmp_path):
  config = sr_config()
  val = pipeline.make_val_clips(config.data, num_clips=1, seed=config.seed + 1)
  seen = []
  real_tune = baselines.tune

  def spy(samples, *args, **kwargs):
    seen.extend(gt for _, gt, _ in samples)
    return real_tune(samples, *args, **kwargs)

  monkeypatch.setattr(baselines, "tune", spy)
  tuned = train_lib.classical_baselines(config, val, str(tmp_path))
  assert seen and not any(gt.shape == v["gt"].shape and np.array_equal(gt, v["gt"])
                          for gt in seen for v in val)
  assert all(n.startswith("synthetic_train_") for n in tuned["tuned_on"])
  assert tuned["scale"] == 4 and tuned["sigma"] is None and tuned["degradation"] == "bd"
  assert set(tuned["scores"]) == set(baselines.methods_for("bd"))
  # The input row is the bicubic-upscaled input, as validation scores it.
  assert tuned["input"]["psnr"] == pytest.approx(tuned["scores"]["bicubic"]["psnr"])
  # Scores recompute from the settings; a rerun reads baselines.json without tuning again.
  clip = val[0]
  for name, setting in tuned["settings"].items():
    out = baselines.restore(name, clip["lq"], setting, scale=4)
    assert tuned["scores"][name]["psnr"] == pytest.approx(baselines.clip_psnr(out, clip["gt"]))
  seen.clear()
  assert train_lib.classical_baselines(config, val, str(tmp_path)) == tuned and not seen

  # The side-by-side re-applies the best method to an SR clip and shows the input at GT size.
  path = tmp_path / "s.png"
  train_lib.write_side_by_side(str(path), clip, clip["gt"], baseline=tuned, title="t")
  with Image.open(path) as im:
    assert min(im.size) > 300


def test_deblurring_has_no_baselines_and_says_so(caplog):
  config = sr_config(degradation="blur", scale=1)
  with caplog.at_level("WARNING"):
    assert train_lib.classical_baselines(config, []) is None
  assert "No classical baselines for degradation 'blur'" in caplog.text
