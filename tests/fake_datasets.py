"""Tiny fake datasets in the official training layouts, for tests.

Folder and file names follow KAIR's VRT training options (options/vrt/*.json, data/meta_info):
REDS train_sharp/<clip>/%08d.png with train_sharp_bicubic/X4 and train_blur; Vimeo-90K
vimeo_septuplet/sequences/<clip>/<seq>/im1..im7.png with sep_trainlist.txt / sep_testlist.txt and
the BI LR tree vimeo_septuplet_matlabLRx4 (KAIR's generate_LR_Vimeo90K.m); GoPro
train_GT / train_GT_blurred / test_GT / test_GT_blurred with %06d.png numbered from 47 (GoPro clips
do not start at 0); DVD the same with %05d.jpg; DAVIS JPEGImages/480p/<clip>/%05d.jpg (GT only).

`write_fake_dataset(layout, root, task=...)` returns the data-config keys (gt_root, lq_root,
val_gt_root, val_lq_root, layout, source) that point a pipeline at the fake data.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from vrt_jax.data.imresize import imresize


def _frame(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
  # Smooth random content (upsampled noise) so resizing and cropping see real structure.
  h, w = size
  coarse = rng.uniform(0, 1, size=((h + 7) // 8, (w + 7) // 8, 3))
  img = np.clip(imresize(coarse, output_shape=(h, w), axes=(0, 1)), 0, 1)
  return (img * 255).round().astype(np.uint8)


def _save(arr: np.ndarray, path: str) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  if path.endswith(".jpg"):
    Image.fromarray(arr).save(path, quality=95)
  else:
    Image.fromarray(arr).save(path)


def _bicubic(arr: np.ndarray, scale: int) -> np.ndarray:
  small = imresize(arr.astype(np.float64) / 255.0, 1.0 / scale, axes=(0, 1))
  return (np.clip(small, 0, 1) * 255).round().astype(np.uint8)


def _blurred(arr: np.ndarray) -> np.ndarray:
  x = arr.astype(np.float32)
  x = (x + np.roll(x, 1, axis=1) + np.roll(x, 2, axis=1)) / 3.0
  return x.round().astype(np.uint8)


def _write_clip_folders(rng, gt_dir: str, lq_dirs: dict[str, str], clips, frames: int,
                        size: tuple[int, int], tmpl: str, first: int, scale: int) -> None:
  for clip in clips:
    for f in range(first, first + frames):
      name = tmpl % f
      gt = _frame(rng, size)
      _save(gt, os.path.join(gt_dir, clip, name))
      for kind, lq_dir in lq_dirs.items():
        lq = _bicubic(gt, scale) if kind == "bicubic" else _blurred(gt)
        _save(lq, os.path.join(lq_dir, clip, name))


def write_reds(root: str, *, clips=("000", "001", "002"), frames: int = 8,
               size: tuple[int, int] = (64, 80), scale: int = 4, seed: int = 0) -> str:
  """REDS: train_sharp, train_sharp_bicubic/X4 and train_blur under root/REDS; returns it."""
  rng = np.random.default_rng(seed)
  base = os.path.join(root, "REDS")
  _write_clip_folders(rng, os.path.join(base, "train_sharp"),
                      {"bicubic": os.path.join(base, "train_sharp_bicubic", "X4"),
                       "blur": os.path.join(base, "train_blur")},
                      clips, frames, size, "%08d.png", 0, scale)
  return base


def write_vimeo(root: str, *, train=("00001/0001", "00001/0002", "00002/0001"),
                test=("00003/0001",), size: tuple[int, int] = (64, 80), scale: int = 4,
                seed: int = 0) -> str:
  """Vimeo-90K septuplets under root/vimeo_septuplet (+ vimeo_septuplet_matlabLRx4)."""
  rng = np.random.default_rng(seed)
  base = os.path.join(root, "vimeo_septuplet")
  lr = os.path.join(root, "vimeo_septuplet_matlabLRx4")
  for key in tuple(train) + tuple(test):
    for i in range(1, 8):
      gt = _frame(rng, size)
      _save(gt, os.path.join(base, "sequences", key, f"im{i}.png"))
      _save(_bicubic(gt, scale), os.path.join(lr, "sequences", key, f"im{i}.png"))
  for name, keys in (("sep_trainlist.txt", train), ("sep_testlist.txt", test)):
    with open(os.path.join(base, name), "w") as f:
      f.write("".join(k + "\n" for k in keys))
  return base


def write_gopro_like(root: str, name: str, *, ext: str, tmpl: str, first: int,
                     clips=("clip_a", "clip_b"), test_clips=("clip_t",), frames: int = 8,
                     size: tuple[int, int] = (64, 80), seed: int = 0) -> str:
  """GoPro / DVD: train_GT, train_GT_blurred, test_GT, test_GT_blurred under root/name."""
  rng = np.random.default_rng(seed)
  base = os.path.join(root, name)
  for split, names in (("train", clips), ("test", test_clips)):
    _write_clip_folders(rng, os.path.join(base, f"{split}_GT"),
                        {"blur": os.path.join(base, f"{split}_GT_blurred")},
                        names, frames, size, tmpl + ext, first, 1)
  return base


def write_gopro(root: str, **kw) -> str:
  return write_gopro_like(root, "GoPro", ext=".png", tmpl="%06d", first=47, **kw)


def write_dvd(root: str, **kw) -> str:
  return write_gopro_like(root, "DVD", ext=".jpg", tmpl="%05d", first=0, **kw)


def write_davis(root: str, *, clips=("bear", "blackswan"), frames: int = 8,
                size: tuple[int, int] = (64, 80), seed: int = 0, name: str = "DAVIS") -> str:
  """DAVIS: JPEGImages/480p/<clip>/%05d.jpg under root/name (GT only)."""
  rng = np.random.default_rng(seed)
  base = os.path.join(root, name)
  _write_clip_folders(rng, os.path.join(base, "JPEGImages", "480p"), {}, clips, frames, size,
                      "%05d.jpg", 0, 1)
  return base


def write_fake_dataset(layout: str, root: str, *, task: str = "sr", **kw) -> dict[str, str]:
  """Writes a tiny dataset of `layout` under root; returns data-config keys that use it.

  task: 'sr' (LQ = BI frames on disk), 'deblur' (blurred frames), 'denoise' / 'vfi' (GT only).
  """
  lq_root = val_gt = val_lq = ""
  if layout == "reds":
    base = write_reds(root, **kw)
    gt_root = os.path.join(base, "train_sharp")
    if task == "sr":
      lq_root = os.path.join(base, "train_sharp_bicubic", "X4")
    elif task == "deblur":
      lq_root = os.path.join(base, "train_blur")
  elif layout == "vimeo":
    base = write_vimeo(root, **kw)
    gt_root = base
    if task == "sr":
      lq_root = os.path.join(root, "vimeo_septuplet_matlabLRx4")
  elif layout in ("gopro", "dvd"):
    base = (write_gopro if layout == "gopro" else write_dvd)(root, **kw)
    gt_root, val_gt = os.path.join(base, "train_GT"), os.path.join(base, "test_GT")
    if task == "deblur":
      lq_root, val_lq = (os.path.join(base, "train_GT_blurred"),
                         os.path.join(base, "test_GT_blurred"))
  elif layout == "davis":
    gt_root = write_davis(root, **kw)
    val_gt = write_davis(root, clips=("val_clip",), name="DAVIS_val",
                         seed=kw.get("seed", 0) + 1)
  else:
    raise ValueError(f"Unknown layout {layout!r}.")
  return {"source": "folders", "layout": layout, "gt_root": gt_root, "lq_root": lq_root,
          "val_gt_root": val_gt, "val_lq_root": val_lq}
