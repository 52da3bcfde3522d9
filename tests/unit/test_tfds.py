"""TFDS builders (array_record, no TensorFlow) feeding the same pipeline."""

import os

import fake_datasets
import numpy as np
import pytest

from vrt_jax.data import layouts, pipeline, tfds_builders


@pytest.fixture(scope="module")
def reds_tfds(tmp_path_factory):
  root = tmp_path_factory.mktemp("tfds")
  cfg = fake_datasets.write_fake_dataset("reds", str(root / "src"), task="sr", frames=7)
  manual_dir = os.path.dirname(cfg["gt_root"])        # .../REDS
  data_dir = str(root / "data")
  tfds_builders.build("reds_bi", manual_dir, data_dir)
  return cfg, data_dir


def test_build_stores_frames_in_clip_order_with_clip_table(reds_tfds):
  cfg, data_dir = reds_tfds
  store = tfds_builders.TfdsStore("reds_bi", data_dir, split="train")
  # REDS4 clip 000 is held out of train and is the test split.
  assert [store.clip_name(i) for i in range(len(store))] == ["001", "002"]
  assert [store.clip_length(i) for i in range(len(store))] == [7, 7]
  gt, lq = store.load(1, [2, 3], lq=True)
  folder = layouts.FolderStore(layouts.find_clips("reds", cfg["gt_root"], cfg["lq_root"]))
  want_gt, want_lq = folder.load(1, [2, 3], lq=True)
  np.testing.assert_array_equal(gt, want_gt)
  np.testing.assert_array_equal(lq, want_lq)
  test = tfds_builders.TfdsStore("reds_bi", data_dir, split="test")
  assert [test.clip_name(i) for i in range(len(test))] == ["000"]


def test_pipeline_reads_batches_from_tfds(reds_tfds):
  _, data_dir = reds_tfds
  cfg = dict(source="tfds", layout="reds", tfds_data_dir=data_dir, tfds_config="reds_bi",
             degradation="bi", num_frames=6, gt_patch=32)
  it = iter(pipeline.make_train_loader(cfg, batch_size=2, seed=0))
  batch = next(it)
  assert batch["lq"].shape == (2, 6, 8, 8, 3) and batch["gt"].shape == (2, 6, 32, 32, 3)
  val = pipeline.make_val_clips(cfg, num_clips=2, seed=0)
  assert [v["name"] for v in val] == ["000"] and val[0]["lq"].shape == (6, 16, 16, 3)


def test_same_samples_from_tfds_and_folders(reds_tfds):
  cfg, data_dir = reds_tfds
  common = dict(layout="reds", degradation="bi", num_frames=6, gt_patch=32)
  folders = next(iter(pipeline.make_train_loader(dict(cfg, **common), batch_size=2, seed=5)))
  tfds = next(iter(pipeline.make_train_loader(
      dict(common, source="tfds", tfds_data_dir=data_dir, tfds_config="reds_bi"),
      batch_size=2, seed=5)))
  np.testing.assert_array_equal(folders["lq"], tfds["lq"])
  np.testing.assert_array_equal(folders["gt"], tfds["gt"])


def test_unprepared_dataset_error_says_how_to_build(tmp_path):
  with pytest.raises(FileNotFoundError, match="not prepared.*build"):
    tfds_builders.TfdsStore("gopro", str(tmp_path))
