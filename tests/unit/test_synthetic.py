"""Embedded synthetic clips from scikit-image's bundled photographs."""

import importlib.util
import os

import numpy as np

from vrt_jax.data import synthetic


def test_photographs_ship_inside_the_installed_package():
  # Loading must not need the network: every photograph is a file of the installed wheel.
  package_dir = list(importlib.util.find_spec("skimage").submodule_search_locations)[0]
  assert os.path.realpath(synthetic.image_dir()).startswith(os.path.realpath(package_dir))
  for name in synthetic.TRAIN_IMAGES + synthetic.TEST_IMAGES:
    assert os.path.isfile(os.path.join(synthetic.image_dir(), name)), name
    photo = synthetic.load_photo(name)
    assert photo.ndim == 3 and photo.shape[2] == 3 and min(photo.shape[:2]) >= 256


def test_train_and_test_photographs_are_disjoint(monkeypatch):
  assert not set(synthetic.TRAIN_IMAGES) & set(synthetic.TEST_IMAGES)
  used = {"train": set(), "test": set()}
  real = synthetic.load_photo

  for split in used:
    def record(name, level=1.0, split=split):
      used[split].add(name)
      return real(name, level)
    monkeypatch.setattr(synthetic, "load_photo", record)
    for seed in range(12):
      synthetic.make_clip(seed, num_frames=2, size=32, split=split)
  assert used["train"] <= set(synthetic.TRAIN_IMAGES) and len(used["train"]) > 1
  assert used["test"] <= set(synthetic.TEST_IMAGES)


def test_clip_is_deterministic_8bit_and_in_range():
  a = synthetic.make_clip(3, num_frames=6, size=64)
  b = synthetic.make_clip(3, num_frames=6, size=64)
  c = synthetic.make_clip(4, num_frames=6, size=64)
  assert a.shape == (6, 64, 64, 3) and a.dtype == np.float32
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  assert a.min() >= 0 and a.max() <= 1
  np.testing.assert_allclose(a * 255, np.round(a * 255), atol=1e-4)


def test_camera_moves_smoothly():
  sub = synthetic.render(5, num_frames=8, size=64)
  steps = np.abs(np.diff(sub, axis=0)).mean(axis=(1, 2, 3))
  other = np.abs(sub[0] - synthetic.render(6, num_frames=1, size=64)[0]).mean()
  assert np.all(steps > 0)            # the camera moves every frame
  assert steps.max() < other          # ... but by less than a change of scene


def test_blurred_clip_averages_subframes():
  blurred, sharp = synthetic.make_blurred_clip(7, num_frames=4, size=48, sub_per_frame=5)
  sub = synthetic.render(7, num_frames=4, size=48, sub_per_frame=5)
  assert blurred.shape == sharp.shape == (4, 48, 48, 3)
  np.testing.assert_allclose(blurred, sub.reshape(4, 5, 48, 48, 3).mean(1), atol=0.6 / 255)
  np.testing.assert_allclose(sharp, sub[2::5], atol=0.6 / 255)
  # Averaging along the motion removes detail: smaller gradients than the sharp frames.
  grad = lambda x: np.abs(np.diff(x, axis=1)).mean() + np.abs(np.diff(x, axis=2)).mean()
  assert grad(blurred) < grad(sharp)


def test_store_reads_windows_of_its_clips():
  store = synthetic.SyntheticStore(num_clips=3, num_frames=6, size=32, seed=1)
  gt, lq = store.load(2, [1, 2, 3], lq=False)
  assert lq is None and gt.shape == (3, 32, 32, 3)
  np.testing.assert_array_equal(
      gt, synthetic.make_clip(1 * 1_000_003 + 2, num_frames=6, size=32)[1:4])
  blur = synthetic.SyntheticStore(num_clips=1, num_frames=4, size=32, blur=True)
  gt, lq = blur.load(0, [0, 1], lq=True)
  assert gt.shape == lq.shape == (2, 32, 32, 3) and not np.array_equal(gt, lq)
