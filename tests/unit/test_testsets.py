"""Test-set readers follow the official layouts and fail clearly on malformed folders."""

import numpy as np
import pytest
from PIL import Image

from vrt_jax.data import testsets


def _write(path, rng, size=(16, 24)):
  path.parent.mkdir(parents=True, exist_ok=True)
  img = rng.integers(0, 256, size + (3,), dtype=np.uint8)
  Image.fromarray(img).save(path)
  return img


def test_paired_reads_sorted_frames_per_clip(tmp_path):
  rng = np.random.default_rng(0)
  gts = {}
  for clip in ("011", "000"):
    for t in (2, 0, 1):
      _write(tmp_path / "lq" / clip / f"{t:08d}.png", rng, (8, 12))
      gts[clip, t] = _write(tmp_path / "gt" / clip / f"{t:08d}.png", rng, (32, 48))
  ts = testsets.paired(tmp_path / "lq", tmp_path / "gt")
  assert ts.names == ["000", "011"]
  clip = ts[1]
  assert clip.lq.shape == (3, 8, 12, 3) and clip.gt.shape == (3, 32, 48, 3)
  assert clip.lq.dtype == np.float32 and clip.out_index == [0, 1, 2]
  assert clip.frame_names == ["00000000", "00000001", "00000002"]
  np.testing.assert_array_equal(clip.gt[2], gts["011", 2] / np.float32(255))


def test_paired_errors_name_the_layout(tmp_path):
  rng = np.random.default_rng(1)
  with pytest.raises(ValueError, match="does not exist"):
    testsets.paired(tmp_path / "nope", None)
  _write(tmp_path / "flat" / "0.png", rng)
  with pytest.raises(ValueError, match="subfolder per clip"):
    testsets.paired(tmp_path / "flat", None)
  for t in range(3):
    _write(tmp_path / "lq" / "a" / f"{t}.png", rng)
  for t in range(2):
    _write(tmp_path / "gt" / "a" / f"{t}.png", rng)
  with pytest.raises(ValueError, match="3 LQ frames but 2 GT"):
    testsets.paired(tmp_path / "lq", tmp_path / "gt")[0]
  (tmp_path / "gt2" / "b").mkdir(parents=True)
  with pytest.raises(ValueError, match="lacks the clips"):
    testsets.paired(tmp_path / "lq", tmp_path / "gt2")
  _write(tmp_path / "mixed" / "a" / "0.png", rng, (16, 24))
  _write(tmp_path / "mixed" / "a" / "1.png", rng, (16, 16))
  with pytest.raises(ValueError, match="same size"):
    testsets.paired(tmp_path / "mixed", None)[0]
  (tmp_path / "bad" / "a").mkdir(parents=True)
  (tmp_path / "bad" / "a" / "0.png").write_bytes(b"not a png")
  with pytest.raises(ValueError, match="cannot read image"):
    testsets.paired(tmp_path / "bad", None)[0]


def test_vimeo_pads_seven_frames_to_eight_and_scores_the_middle(tmp_path):
  rng = np.random.default_rng(2)
  seqs = ["00001/0266", "00002/0001"]
  frames = {}
  for seq in seqs:
    for i in range(1, 8):
      frames[seq, i] = _write(tmp_path / "lr" / "sequences" / seq / f"im{i}.png", rng, (8, 8))
      _write(tmp_path / "gt" / "sequences" / seq / f"im{i}.png", rng, (32, 32))
  (tmp_path / "gt" / "sep_testlist.txt").write_text("\n".join(seqs) + "\n")
  ts = testsets.vimeo(tmp_path / "lr", tmp_path / "gt")
  assert ts.names == seqs
  clip = ts[0]
  assert clip.lq.shape == (8, 8, 8, 3) and clip.gt.shape == (1, 32, 32, 3)
  np.testing.assert_array_equal(clip.lq[7], clip.lq[6])
  np.testing.assert_array_equal(clip.lq[0], frames[seqs[0], 1] / np.float32(255))
  assert clip.out_index == [3]

  vfi = testsets.vfi(tmp_path / "gt")
  clip = vfi[1]
  assert clip.lq.shape == (4, 32, 32, 3) and clip.out_index == [0]
  with pytest.raises(ValueError, match="sep_testlist"):
    testsets.vimeo(tmp_path / "lr", tmp_path / "lr")


def test_davis_denoise_is_seeded_unclipped_with_noise_map(tmp_path):
  rng = np.random.default_rng(3)
  for clip in ("a", "b"):
    for t in range(2):
      _write(tmp_path / clip / f"{t:05d}.jpg", rng, (16, 16))
  ts = testsets.davis_denoise(tmp_path, 30)
  a1, a2, b = ts[0], ts[0], ts[1]
  assert a1.lq.shape == (2, 16, 16, 4)
  np.testing.assert_array_equal(a1.lq, a2.lq)  # deterministic
  np.testing.assert_allclose(a1.lq[..., 3], 30 / 255)
  noise = a1.lq[..., :3] - a1.gt
  assert abs(noise.std() - 30 / 255) < 0.01 and (a1.lq[..., :3] < 0).any()  # not clipped
  # Every clip is seeded the same way (the reference re-seeds 0 per clip).
  np.testing.assert_allclose(b.lq[..., :3] - b.gt, noise, atol=1e-6)
  with pytest.raises(ValueError, match="sigma"):
    testsets.davis_denoise(tmp_path, 0)


def test_vfi_davis_and_ucf101(tmp_path):
  rng = np.random.default_rng(4)
  davis = [_write(tmp_path / "davis" / "bear" / f"{t:05d}.png", rng, (8, 12)) for t in range(9)]
  ts = testsets.vfi_davis(tmp_path / "davis", crop=(8, 8))
  assert ts.names == ["bear/00003", "bear/00005"]  # starts 0 and 2
  clip = ts[1]
  assert clip.lq.shape == (4, 8, 8, 3) and clip.gt.shape == (1, 8, 8, 3)
  # Start 2: inputs 2, 4, 6, 8; target 5; crop 12 -> 8 wide at offset round(2.0) = 2.
  np.testing.assert_array_equal(clip.gt[0], davis[5][:, 2:10] / np.float32(255))
  np.testing.assert_array_equal(clip.lq[3], davis[8][:, 2:10] / np.float32(255))
  for t in range(4):
    _write(tmp_path / "ucf" / "v1" / f"frame{t}.png", rng, (10, 10))
  target = _write(tmp_path / "ucf" / "v1" / "framet.png", rng, (10, 10))
  assert testsets.vfi(tmp_path / "ucf").loaders  # recognised as UCF101 by framet.png
  ucf = testsets.vfi_ucf101(tmp_path / "ucf", crop=(8, 8))[0]
  # torchvision CenterCrop of 10 -> 8: offset round(1.0) = 1.
  np.testing.assert_array_equal(ucf.gt[0], target[1:9, 1:9] / np.float32(255))
  assert ucf.lq.shape == (4, 8, 8, 3)
  with pytest.raises(ValueError, match="smaller than the crop"):
    testsets.vfi(tmp_path / "ucf")[0]  # default 224x224 crop
