"""Readers for the official training layouts of the VRT datasets.

Folder names, frame names and partitions follow KAIR's VRT training options (options/vrt/*.json)
and its data/meta_info files:

  reds   train_sharp/<clip>/%08d.png; LQ train_sharp_bicubic/X4/<clip>/ (SR) or train_blur/<clip>/
         (deblurring); the REDS4 clips 000, 011, 015, 020 are held out of training.
  vimeo  sequences/<clip>/<seq>/im1.png ... im7.png with sep_trainlist.txt / sep_testlist.txt
         listing "<clip>/<seq>"; LQ in the same tree under another root (vimeo_septuplet_matlabLRx4
         for BI, vimeo_septuplet_BDLRx4 for BD).
  gopro  train_GT/<clip>/%06d.png, LQ train_GT_blurred/<clip>/ (numbering need not start at 0).
  dvd    train_GT/<clip>/%05d.jpg, LQ train_GT_blurred/<clip>/.
  davis  JPEGImages/480p/<clip>/%05d.jpg, GT only (noise is added on the fly).

`gt_root` / `lq_root` may name the frames folder itself (e.g. .../REDS/train_sharp) or the dataset
root that holds the standard sub-folder. Frames are taken in sorted file-name order; LQ frames must
have the same names as GT frames.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import numpy as np
from PIL import Image

LAYOUTS = ("reds", "vimeo", "gopro", "dvd", "davis")
REDS4 = ("000", "011", "015", "020")

_EXT = {"reds": ".png", "vimeo": ".png", "gopro": ".png", "dvd": ".jpg", "davis": ".jpg"}
_GT_SUBDIR = {"reds": "train_sharp", "vimeo": "sequences", "gopro": "train_GT", "dvd": "train_GT",
              "davis": os.path.join("JPEGImages", "480p")}
_LQ_SUBDIRS = {"reds": (os.path.join("train_sharp_bicubic", "X4"), "train_blur"),
               "vimeo": ("sequences",), "gopro": ("train_GT_blurred",),
               "dvd": ("train_GT_blurred",), "davis": ()}
_EXPECTED = {
    "reds": "<root>/train_sharp/<clip>/00000000.png ... (LQ: train_sharp_bicubic/X4/<clip>/ or "
            "train_blur/<clip>/)",
    "vimeo": "<root>/sequences/<clip>/<seq>/im1.png ... im7.png and <root>/sep_trainlist.txt",
    "gopro": "<root>/train_GT/<clip>/000001.png ... (LQ: train_GT_blurred/<clip>/)",
    "dvd": "<root>/train_GT/<clip>/00000.jpg ... (LQ: train_GT_blurred/<clip>/)",
    "davis": "<root>/JPEGImages/480p/<clip>/00000.jpg ...",
}


class BadSampleError(ValueError):
  """An image of the training data is missing or cannot be decoded; the message names the file."""


def expected_layout(layout: str) -> str:
  """A one-line description of the folder layout that `layout` expects."""
  return _EXPECTED[layout]


def read_image(path: str) -> np.ndarray:
  """Reads an 8-bit image file as float32 RGB (H, W, 3) in [0, 1]."""
  try:
    with Image.open(path) as im:
      arr = np.asarray(im.convert("RGB"))
  except FileNotFoundError as e:
    raise BadSampleError(f"Image file not found: {path}") from e
  except (OSError, ValueError, SyntaxError) as e:
    raise BadSampleError(f"Cannot decode image {path}: {e}") from e
  return arr.astype(np.float32) / 255.0


def read_frames(paths: Sequence[str]) -> np.ndarray:
  """Reads frames of equal size into (T, H, W, 3) float32."""
  frames = [read_image(p) for p in paths]
  shapes = {f.shape for f in frames}
  if len(shapes) > 1:
    raise BadSampleError(f"Frames of one clip differ in size {sorted(shapes)}: {paths[0]} ...")
  return np.stack(frames)


@dataclasses.dataclass(frozen=True)
class Clip:
  """One training clip: frame paths in temporal order (`lq` is None when LQ is made on the fly)."""
  name: str
  gt: tuple[str, ...]
  lq: tuple[str, ...] | None = None


def _check_layout(layout: str) -> None:
  if layout not in LAYOUTS:
    raise ValueError(f"Unknown dataset layout {layout!r}; expected one of {LAYOUTS}.")


def _frames_dir(root: str, subdirs: Sequence[str], layout: str, what: str) -> str:
  """`root` itself if it holds clip folders, else the first standard sub-folder that exists."""
  if not root or not os.path.isdir(root):
    raise FileNotFoundError(f"{what} folder {root!r} does not exist; the {layout} layout is "
                            f"{_EXPECTED[layout]}.")
  for sub in subdirs:
    if os.path.isdir(os.path.join(root, sub)):
      return os.path.join(root, sub)
  return root


def _list_frames(folder: str, ext: str, layout: str) -> list[str]:
  names = sorted(f for f in os.listdir(folder) if f.lower().endswith(ext))
  if not names:
    raise ValueError(f"Clip folder {folder} has no {ext} frames; the {layout} layout is "
                     f"{_EXPECTED[layout]}.")
  return names


def _vimeo_root(gt_root: str) -> str:
  root = gt_root.rstrip(os.sep)
  if os.path.basename(root) == "sequences":
    root = os.path.dirname(root)
  return root


def vimeo_clips(gt_root: str, lq_root: str = "", split: str = "train") -> list[Clip]:
  """Vimeo-90K septuplets listed in sep_trainlist.txt (split 'train') or sep_testlist.txt."""
  root = _vimeo_root(gt_root)
  list_file = os.path.join(root, "sep_trainlist.txt" if split == "train" else "sep_testlist.txt")
  seq_dir = os.path.join(root, "sequences")
  if not os.path.isfile(list_file) or not os.path.isdir(seq_dir):
    raise FileNotFoundError(f"Vimeo-90K root {root!r} lacks {os.path.basename(list_file)} or "
                            f"sequences/; expected {_EXPECTED['vimeo']}.")
  with open(list_file) as f:
    keys = [line.strip() for line in f if line.strip()]
  if not keys:
    raise ValueError(f"{list_file} lists no sequences (expected lines like 00001/0001).")
  lq_dir = ""
  if lq_root:
    lq_dir = _frames_dir(lq_root, ("sequences",), "vimeo", "LQ")
  clips = []
  for key in keys:
    names = [f"im{i}.png" for i in range(1, 8)]
    gt = tuple(os.path.join(seq_dir, key, n) for n in names)
    lq = tuple(os.path.join(lq_dir, key, n) for n in names) if lq_dir else None
    clips.append(Clip(key, gt, lq))
  # Listing 64k folders would be slow; check the first one so a wrong root fails early.
  if not os.path.isfile(clips[0].gt[0]):
    raise FileNotFoundError(f"{clips[0].gt[0]} is missing; expected {_EXPECTED['vimeo']}.")
  if lq_dir and not os.path.isfile(clips[0].lq[0]):
    raise FileNotFoundError(f"{clips[0].lq[0]} is missing; the LQ root must mirror "
                            f"sequences/<clip>/<seq>/im1..im7.png.")
  return clips


def find_clips(layout: str, gt_root: str, lq_root: str = "", *, split: str = "train",
               exclude: Sequence[str] | None = None) -> list[Clip]:
  """Lists the clips of a training layout.

  Args:
    layout: one of LAYOUTS.
    gt_root: dataset root or GT frames folder.
    lq_root: LQ frames folder (or dataset root); '' when LQ is made on the fly.
    split: 'train' or 'test'; only Vimeo-90K and REDS (REDS4) have a partition in the training
      layout ('test' selects it).
    exclude: clip names left out of training; default REDS4 for REDS, none otherwise.

  Returns:
    Clips sorted by name.
  """
  _check_layout(layout)
  if layout == "vimeo":
    return vimeo_clips(gt_root, lq_root, split)
  ext = _EXT[layout]
  gt_dir = _frames_dir(gt_root, (_GT_SUBDIR[layout],), layout, "GT")
  lq_dir = _frames_dir(lq_root, _LQ_SUBDIRS[layout], layout, "LQ") if lq_root else ""
  names = sorted(d for d in os.listdir(gt_dir) if os.path.isdir(os.path.join(gt_dir, d)))
  if not names:
    raise ValueError(f"GT folder {gt_dir} has no clip folders; the {layout} layout is "
                     f"{_EXPECTED[layout]}.")
  held_out = set(REDS4 if exclude is None and layout == "reds" else (exclude or ()))
  if split == "train":
    names = [n for n in names if n not in held_out]
  else:
    names = [n for n in names if n in held_out]
  clips = []
  for name in names:
    frames = _list_frames(os.path.join(gt_dir, name), ext, layout)
    gt = tuple(os.path.join(gt_dir, name, f) for f in frames)
    lq = None
    if lq_dir:
      lq_clip = os.path.join(lq_dir, name)
      if not os.path.isdir(lq_clip):
        raise FileNotFoundError(f"LQ clip folder {lq_clip} is missing (GT has {gt_dir}/{name}).")
      lq_frames = _list_frames(lq_clip, ext, layout)
      if lq_frames != frames:
        raise ValueError(f"LQ clip {lq_clip} has frames {lq_frames[:3]}... but GT clip "
                         f"{gt_dir}/{name} has {frames[:3]}...; LQ frames must be named as GT.")
      lq = tuple(os.path.join(lq_clip, f) for f in frames)
    clips.append(Clip(name, gt, lq))
  if not clips:
    raise ValueError(f"No {split} clips in {gt_dir} (held out: {sorted(held_out)}).")
  return clips


class FolderStore:
  """Random access to frames of clips on disk (picklable, for grain workers)."""

  def __init__(self, clips: Sequence[Clip]):
    self.clips = list(clips)

  def __len__(self) -> int:
    return len(self.clips)

  def clip_name(self, clip: int) -> str:
    return self.clips[clip].name

  def clip_length(self, clip: int) -> int:
    return len(self.clips[clip].gt)

  def has_lq(self) -> bool:
    return self.clips[0].lq is not None

  def load(self, clip: int, frames: Sequence[int], *, lq: bool
           ) -> tuple[np.ndarray, np.ndarray | None]:
    """GT (T, H, W, 3) and LQ (T, h, w, 3) or None for the given frame positions."""
    c = self.clips[clip]
    gt = read_frames([c.gt[i] for i in frames])
    lq_frames = read_frames([c.lq[i] for i in frames]) if lq else None
    return gt, lq_frames

  def describe(self, clip: int, frame: int) -> str:
    return self.clips[clip].gt[frame]
