"""grain training pipelines over tiny fake datasets in the official layouts."""

import gc
import logging
import os

import fake_datasets
import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest

from vrt_jax.data import degrade, layouts, pipeline

# (layout, task, config overrides, expected lq shape, expected gt shape) per sample.
TASKS = [
    ("reds", "sr", dict(degradation="bi", num_frames=6, gt_patch=32), (6, 8, 8, 3),
     (6, 32, 32, 3)),
    ("reds", "deblur", dict(degradation="blur", num_frames=6, gt_patch=32), (6, 32, 32, 3),
     (6, 32, 32, 3)),
    ("vimeo", "sr", dict(degradation="bi", num_frames=8, gt_patch=32), (8, 8, 8, 3),
     (8, 32, 32, 3)),
    ("vimeo", "vfi", dict(degradation="vfi", gt_patch=32), (4, 32, 32, 3), (1, 32, 32, 3)),
    ("gopro", "deblur", dict(degradation="blur", num_frames=6, gt_patch=32), (6, 32, 32, 3),
     (6, 32, 32, 3)),
    ("dvd", "deblur", dict(degradation="blur", num_frames=6, gt_patch=32), (6, 32, 32, 3),
     (6, 32, 32, 3)),
    ("davis", "denoise", dict(degradation="noise", num_frames=6, gt_patch=32), (6, 32, 32, 4),
     (6, 32, 32, 3)),
]


@pytest.fixture(scope="module")
def fake_root(tmp_path_factory):
  return str(tmp_path_factory.mktemp("fake"))


_WRITTEN = {}


def _cfg(fake_root, layout, task, **overrides):
  """Data config for a fake dataset of (layout, task), written once per test module."""
  key = (fake_root, layout, task)
  if key not in _WRITTEN:
    path = os.path.join(fake_root, f"{layout}_{task}")
    _WRITTEN[key] = fake_datasets.write_fake_dataset(layout, path, task=task)
  return dict(_WRITTEN[key], **overrides)


@pytest.mark.parametrize("layout,task,overrides,lq_shape,gt_shape", TASKS,
                         ids=[f"{t[0]}-{t[1]}" for t in TASKS])
def test_each_task_builds_batches_and_val_clips(fake_root, layout, task, overrides, lq_shape,
                                                gt_shape):
  cfg = _cfg(fake_root, layout, task, **overrides)
  it = iter(pipeline.make_train_loader(cfg, batch_size=2, seed=0))
  for _ in range(2):
    batch = next(it)
    assert batch["lq"].shape == (2,) + lq_shape and batch["gt"].shape == (2,) + gt_shape
    assert batch["lq"].dtype == batch["gt"].dtype == np.float32
  val = pipeline.make_val_clips(cfg, num_clips=1, seed=0)
  assert len(val) == 1 and isinstance(val[0]["name"], str)
  assert val[0]["lq"].shape[0] == lq_shape[0] and val[0]["gt"].shape[0] == gt_shape[0]
  assert val[0]["lq"].shape[-1] == lq_shape[-1]


def test_reds_training_excludes_reds4(fake_root):
  cfg = _cfg(fake_root, "reds", "sr")
  s = pipeline.settings_from_config(cfg)
  train = pipeline.make_store(s, split="train")
  assert [train.clip_name(i) for i in range(len(train))] == ["001", "002"]
  assert [c["name"] for c in pipeline.make_val_clips(cfg, num_clips=4, seed=0)] == ["000"]


def _find(gt_full, crop):
  """(top, left) of `crop` (h, w, 3) inside frame `gt_full` (H, W, 3)."""
  h, w = crop.shape[:2]
  for top in range(gt_full.shape[0] - h + 1):
    for left in range(gt_full.shape[1] - w + 1):
      if np.array_equal(gt_full[top:top + h, left:left + w], crop):
        return top, left
  raise AssertionError("crop not found")


@pytest.mark.parametrize("degradation", ["bi", "bd"])
def test_on_the_fly_crop_equals_cropping_the_full_frame_lq(degradation):
  # The pipeline degrades only the crop plus a margin; that must equal degrading the frame.
  s = pipeline.DataSettings(degradation=degradation, scale=4, gt_patch=32)
  gt = np.random.default_rng(0).uniform(size=(2, 64, 80, 3)).astype(np.float32)
  full = pipeline._degrade(s, gt)
  for seed in range(6):
    gt_crop, lq_crop = pipeline._crop(s, gt, None, np.random.default_rng(seed), "x", 32)
    top, left = _find(gt[0], gt_crop[0])
    assert top % 4 == 0 and left % 4 == 0
    np.testing.assert_allclose(lq_crop, full[:, top // 4:top // 4 + 8, left // 4:left // 4 + 8],
                               atol=1e-6)


def test_disk_lq_is_aligned_with_gt_after_augmentation(fake_root):
  # Fake LQ frames are BI of the whole GT frames; away from the crop border, BI of the GT crop
  # must match them (up to 8-bit rounding) whatever flips and transposition were drawn.
  cfg = _cfg(fake_root, "reds", "sr", degradation="bi", num_frames=3, gt_patch=32)
  it = iter(pipeline.make_train_loader(cfg, batch_size=4, seed=1))
  for _ in range(2):
    batch = next(it)
    ref = np.clip(degrade.bicubic_downsample(batch["gt"], 4), 0, 1)   # files are 8-bit
    np.testing.assert_allclose(batch["lq"][:, :, 2:-2, 2:-2], ref[:, :, 2:-2, 2:-2],
                               atol=2.5 / 255)


class _IndexStore:
  """A store whose frame f of clip c is constant 10 * c + f (to read frame order back)."""

  def __init__(self, lengths, size=16):
    self.lengths, self.size = lengths, size

  def __len__(self):
    return len(self.lengths)

  def clip_name(self, c):
    return str(c)

  def clip_length(self, c):
    return self.lengths[c]

  def has_lq(self):
    return False

  def load(self, c, frames, *, lq):
    values = np.array([10 * c + f for f in frames], np.float32) / 255
    return np.broadcast_to(values[:, None, None, None], (len(frames), self.size, self.size, 3)
                           ).copy(), None

  def describe(self, c, f):
    return f"clip {c} frame {f}"


def _order(sample):
  return list(np.round(sample["gt"][:, 0, 0, 0] * 255).astype(int))


def test_window_past_clip_end_starts_at_random_frame_inside():
  s = pipeline.DataSettings(source="folders", layout="reds", degradation="none", scale=1,
                            num_frames=4, gt_patch=8)
  store = _IndexStore([10])
  starts = set()
  for seed in range(20):
    order = _order(pipeline.make_sample(s, store, 0, 8, np.random.default_rng(seed)))
    assert order == list(range(order[0], order[0] + 4)) and 0 <= order[0] <= 6
    starts.add(order[0])
  assert len(starts) > 1
  assert _order(pipeline.make_sample(s, store, 0, 2, np.random.default_rng(0))) == [2, 3, 4, 5]


def test_vimeo_reverse_pad_and_interpolation_frames():
  store = _IndexStore([7])
  sr = pipeline.DataSettings(source="folders", layout="vimeo", degradation="none", scale=1,
                             num_frames=8, gt_patch=8, reverse=True)
  orders = {tuple(_order(pipeline.make_sample(sr, store, 0, 0, np.random.default_rng(k))))
            for k in range(20)}
  # All seven frames, the last repeated (KAIR's pad_sequence), in either direction.
  assert orders == {(0, 1, 2, 3, 4, 5, 6, 6), (6, 5, 4, 3, 2, 1, 0, 0)}
  no_rev = pipeline.DataSettings(source="folders", layout="vimeo", degradation="none", scale=1,
                                 num_frames=5, gt_patch=8, reverse=False)
  assert {tuple(_order(pipeline.make_sample(no_rev, store, 0, 0, np.random.default_rng(k))))
          for k in range(10)} == {(1, 2, 3, 4, 5)}
  vfi = pipeline.DataSettings(source="folders", layout="vimeo", degradation="vfi", scale=1,
                              gt_patch=8, reverse=False)
  sample = pipeline.make_sample(vfi, store, 0, 0, np.random.default_rng(0))
  assert list(np.round(sample["lq"][:, 0, 0, 0] * 255).astype(int)) == [0, 2, 4, 6]
  assert _order(sample) == [3]


def test_noise_level_is_per_clip_in_range_and_appended(fake_root):
  cfg = _cfg(fake_root, "davis", "denoise", degradation="noise", num_frames=6, gt_patch=32,
             sigma_range=(10, 50))
  batch = next(iter(pipeline.make_train_loader(cfg, batch_size=4, seed=0)))
  for lq, gt in zip(batch["lq"], batch["gt"], strict=True):
    sigma = lq[..., 3]
    assert np.all(sigma == sigma.flat[0]) and 10 / 255 <= sigma.flat[0] <= 50 / 255
    noise = lq[..., :3] - gt
    assert abs(noise.std() - sigma.flat[0]) < 0.1 * sigma.flat[0]
  assert batch["lq"][..., :3].min() < 0 or batch["lq"][..., :3].max() > 1   # not clipped


def test_synthetic_source_needs_no_files():
  cfg = dict(source="synthetic", degradation="bi", num_frames=6, gt_patch=64, synthetic_clips=4)
  batch = next(iter(pipeline.make_train_loader(cfg, batch_size=2, seed=0)))
  assert batch["lq"].shape == (2, 6, 16, 16, 3) and batch["gt"].shape == (2, 6, 64, 64, 3)
  val = pipeline.make_val_clips(cfg, num_clips=2, seed=0)
  assert [v["name"] for v in val] == ["synthetic_test_00000", "synthetic_test_00001"]
  assert val[0]["lq"].shape == (6, 16, 16, 3)


def _take(it, n):
  return [next(it) for _ in range(n)]


def test_iterator_state_checkpoint_resumes_the_same_batches(tmp_path):
  cfg = dict(source="synthetic", degradation="noise", num_frames=2, gt_patch=16,
             synthetic_clips=5)
  make = lambda: iter(pipeline.make_train_loader(cfg, batch_size=2, seed=3))
  it = make()
  _take(it, 3)
  with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
    mngr.save(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
    mngr.wait_until_finished()
    expected = _take(it, 3)
    fresh = make()
    mngr.restore(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(fresh)))
  for got, want in zip(_take(fresh, 3), expected, strict=True):
    np.testing.assert_array_equal(got["lq"], want["lq"])
    np.testing.assert_array_equal(got["gt"], want["gt"])


def test_process_shards_are_disjoint_and_cover_the_keys():
  cfg = dict(source="synthetic", degradation="none", scale=1, num_frames=1, gt_patch=16,
             synthetic_clips=8, flip=False, rotate=False)
  seen = []
  for index in range(2):
    it = iter(pipeline.make_train_loader(cfg, batch_size=1, seed=0, process_index=index,
                                         process_count=2))
    seen.append({next(it)["gt"].tobytes() for _ in range(4)})
  assert len(seen[0]) == len(seen[1]) == 4 and not seen[0] & seen[1]


@pytest.fixture()
def corrupt_reds(tmp_path):
  cfg = fake_datasets.write_fake_dataset("reds", str(tmp_path), task="sr",
                                         clips=("001",), frames=6)
  bad = os.path.join(cfg["gt_root"], "001", "00000003.png")
  with open(bad, "wb") as f:
    f.write(b"this is not a png")
  cfg.update(degradation="bi", num_frames=6, gt_patch=32)
  return cfg, bad


def test_corrupt_image_raises_error_naming_the_file(corrupt_reds):
  cfg, bad = corrupt_reds
  it = iter(pipeline.make_train_loader(cfg, batch_size=1, seed=0))
  with pytest.raises(Exception, match="00000003.png"):
    next(it)


def test_skip_bad_samples_logs_and_substitutes(corrupt_reds, tmp_path, caplog):
  cfg, bad = corrupt_reds
  # A second clip of good frames to substitute from.
  good = fake_datasets.write_reds(str(tmp_path / "more"), clips=("002",), frames=6, seed=1)
  for sub in ("train_sharp", os.path.join("train_sharp_bicubic", "X4")):
    os.rename(os.path.join(good, sub, "002"),
              os.path.join(os.path.dirname(cfg["gt_root"]), sub, "002"))
  it = iter(pipeline.make_train_loader(cfg, batch_size=2, seed=0, skip_bad_samples=True))
  with caplog.at_level(logging.WARNING):
    batches = _take(it, 4)
  assert all(b["gt"].shape == (2, 6, 32, 32, 3) for b in batches)
  assert any("00000003.png" in r.getMessage() for r in caplog.records)


def test_missing_root_and_empty_clip_errors_name_path_and_layout(tmp_path):
  missing = str(tmp_path / "nowhere")
  with pytest.raises(FileNotFoundError, match="nowhere.*train_sharp"):
    pipeline.make_train_loader(dict(source="folders", layout="reds", gt_root=missing),
                               batch_size=1, seed=0)
  os.makedirs(tmp_path / "GoPro" / "train_GT" / "empty_clip")
  with pytest.raises(ValueError, match="empty_clip.*no .png frames"):
    layouts.find_clips("gopro", str(tmp_path / "GoPro"))


def test_bad_config_values_are_rejected():
  with pytest.raises(ValueError, match="degradation"):
    pipeline.settings_from_config(dict(degradation="jpeg"))
  with pytest.raises(ValueError, match="multiple of data.scale"):
    pipeline.settings_from_config(dict(degradation="bi", gt_patch=30))
  with pytest.raises(ValueError, match="lq_root"):
    pipeline.make_train_loader(dict(source="folders", layout="gopro", gt_root="/x",
                                    degradation="blur"), batch_size=1, seed=0)


@pytest.mark.slow
def test_worker_processes_give_the_same_samples():
  # Workers batch their own records (worker w gets records w, w + n, ...), so compare the samples
  # of the first 8 records, not batch by batch.
  cfg = dict(source="synthetic", degradation="bi", num_frames=2, gt_patch=32, synthetic_clips=6)
  samples = lambda batches: sorted(x.tobytes() for b in batches for x in np.asarray(b["lq"]))
  serial = _take(iter(pipeline.make_train_loader(cfg, batch_size=2, seed=0)), 4)
  it = iter(pipeline.make_train_loader(dict(cfg, num_workers=2), batch_size=2, seed=0))
  # Copy out of the workers' shared memory, then let the iterator shut its workers down.
  parallel = [{k: np.array(v) for k, v in b.items()} for b in _take(it, 4)]
  del it
  gc.collect()
  assert all(np.asarray(b["gt"]).shape == (2, 2, 32, 32, 3) for b in parallel)
  assert samples(parallel) == samples(serial)
