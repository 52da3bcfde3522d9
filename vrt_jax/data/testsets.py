"""Readers for the official VRT test sets, as main_test_vrt.py / dataset_video_test.py read them.

Every reader returns a `TestSet`: a list of clip names with lazy loading, so a large test set is
read one clip at a time. A loaded `TestClip` holds the model input `lq` (T, h, w, Cin), the ground
truth `gt` (T_gt, H, W, 3) (or None) and `out_index`, the output frames that `gt` scores.

Layouts (frames are sorted by file name; PNG/JPEG/BMP):
* `paired(lq_root, gt_root)`: `<root>/<clip>/<frame>` for LQ and GT (REDS4, Vid4, UDM10, GoPro,
  DVD, REDS deblur). GT may be omitted (restoration without scores).
* `vimeo(lq_root, gt_root)`: Vimeo-90K-T, `<root>/sequences/<clip>/<seq>/im1..im7.png` with
  `sep_testlist.txt` beside `sequences/` (or given). Seven LQ frames padded to eight by repeating
  the last (the reference's `pad_sequence`); only the middle frame (im4, output index 3) is scored.
* `davis_denoise(gt_root, sigma)`: DAVIS-test / Set8, GT only. Noise is Gaussian with std
  sigma/255, not clipped, drawn per clip from `np.random.default_rng(0)`: the reference re-seeds
  with `torch.manual_seed(0)` before every clip, so every clip gets the stream of the same seed;
  numpy cannot replay torch's generator, so the noise samples (not their statistics) differ from
  the official ones. The noise map sigma/255 is appended as a fourth channel.
* Frame interpolation (input 4 frames, output the middle one):
  `vfi_vimeo(root)`: Vimeo septuplets, input im1, im3, im5, im7, target im4 (main_test_vrt.py
  with temporal_scale 2); `vfi_davis(root)`: per clip, every 2nd start s, input frames s, s+2,
  s+4, s+6, target s+3, centre-cropped to 480x840 (`VFI_DAVIS`); `vfi_ucf101(root)`:
  `<clip>/frame0..frame3.png` input, `framet.png` target, centre-cropped to 224x224 (`VFI_UCF101`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from vrt_jax import video
from vrt_jax.data import degrade

PAIRED_LAYOUT = "<root>/<clip>/<frame>.png (one subfolder per clip, frames sorted by name)"
VIMEO_LAYOUT = ("<root>/sequences/<clip>/<seq>/im1.png..im7.png with <root>/sep_testlist.txt "
                "listing <clip>/<seq> per line")
UCF_LAYOUT = "<root>/<clip>/frame0.png..frame3.png and framet.png"


@dataclasses.dataclass
class TestClip:
  """A test clip: `lq` (T, h, w, Cin), `gt` (T_gt, H, W, 3) float32; gt[i] scores output frame
  out_index[i]."""

  name: str
  lq: np.ndarray
  gt: np.ndarray | None
  out_index: list[int]
  frame_names: list[str]  # Stem of each scored output frame, for saving.


@dataclasses.dataclass
class TestSet(Sequence):
  """Lazily loaded clips: `len(ts)`, `ts.names`, `ts[i]` reads clip i; `kind` names the reader."""

  names: list[str]
  loaders: list[Callable[[], TestClip]]
  kind: str = "paired"

  def __len__(self) -> int:
    return len(self.names)

  def __getitem__(self, i):  # type: ignore[override]
    return self.loaders[i]()

  def __iter__(self) -> Iterator[TestClip]:
    for load in self.loaders:
      yield load()


def _subfolders(root: str | os.PathLike, layout: str, what: str) -> list[Path]:
  root = Path(root)
  if not root.is_dir():
    raise ValueError(f"{what} folder {root} does not exist; expected the layout {layout}")
  subs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
  if not subs:
    has_images = any(p.suffix.lower() in video.IMAGE_EXTENSIONS for p in root.iterdir())
    hint = (" It holds images directly: put them in a subfolder per clip." if has_images else "")
    raise ValueError(f"{what} folder {root} has no clip subfolders; expected {layout}.{hint}")
  return subs


def _stems(paths: Sequence[Path]) -> list[str]:
  return [p.stem for p in paths]


def paired(lq_root: str | os.PathLike, gt_root: str | os.PathLike | None) -> TestSet:
  """LQ and GT folders with one subfolder per clip (REDS4, Vid4, UDM10, GoPro, DVD, REDS deblur)."""
  lq_clips = _subfolders(lq_root, PAIRED_LAYOUT, "LQ")
  if gt_root:
    gt_clips = {p.name: p for p in _subfolders(gt_root, PAIRED_LAYOUT, "GT")}
    missing = [p.name for p in lq_clips if p.name not in gt_clips]
    if missing:
      raise ValueError(f"GT folder {gt_root} lacks the clips {missing} found in {lq_root}; "
                       f"expected the same clip subfolders in both ({PAIRED_LAYOUT})")

  def loader(lq_dir: Path) -> Callable[[], TestClip]:
    def load() -> TestClip:
      lq_paths = video.list_frames(lq_dir)
      lq = video.read_images(lq_paths)
      gt = None
      if gt_root:
        gt_paths = video.list_frames(gt_clips[lq_dir.name])
        if len(gt_paths) != len(lq_paths):
          raise ValueError(f"clip {lq_dir.name}: {len(lq_paths)} LQ frames but {len(gt_paths)} "
                           f"GT frames in {gt_clips[lq_dir.name]}")
        gt = video.read_images(gt_paths)
      return TestClip(lq_dir.name, lq, gt, list(range(len(lq_paths))), _stems(lq_paths))
    return load

  return TestSet([p.name for p in lq_clips], [loader(p) for p in lq_clips])


def davis_denoise(gt_root: str | os.PathLike, sigma: float, *, seed: int = 0) -> TestSet:
  """GT clips with Gaussian noise of std sigma/255 and the noise map appended (DAVIS, Set8)."""
  if not sigma or sigma <= 0:
    raise ValueError(f"denoising needs a noise level sigma > 0 (in /255 units, e.g. 10..50); "
                     f"got {sigma}")
  gt_clips = _subfolders(gt_root, PAIRED_LAYOUT, "GT")

  def loader(gt_dir: Path) -> Callable[[], TestClip]:
    def load() -> TestClip:
      paths = video.list_frames(gt_dir)
      gt = video.read_images(paths)
      # Same seed for every clip, as the reference re-seeds before each one.
      lq = degrade.add_noise(gt, sigma / 255.0, np.random.default_rng(seed))
      return TestClip(gt_dir.name, lq, gt, list(range(len(paths))), _stems(paths))
    return load

  return TestSet([p.name for p in gt_clips], [loader(p) for p in gt_clips], kind="davis")


def _seq_root(root: str | os.PathLike) -> Path:
  root = Path(root)
  seq_root = root / "sequences" if (root / "sequences").is_dir() else root
  if not seq_root.is_dir():
    raise ValueError(f"Vimeo folder {root} does not exist; expected {VIMEO_LAYOUT}")
  return seq_root


def _read_list(roots: Sequence[str | os.PathLike], list_file: str | os.PathLike | None
               ) -> list[str]:
  """Sequences of sep_testlist.txt (given, or found beside the first root that has one)."""
  if list_file is None:
    candidates = [c for r in roots for sr in [_seq_root(r)]
                  for c in (sr.parent / "sep_testlist.txt", sr / "sep_testlist.txt")]
    found = [c for c in candidates if c.is_file()]
    if not found:
      raise ValueError(f"no sep_testlist.txt beside {', '.join(map(str, roots))}; "
                       f"expected {VIMEO_LAYOUT}")
    list_file = found[0]
  with open(list_file) as f:
    seqs = [line.split()[0] for line in f if line.strip()]
  if not seqs:
    raise ValueError(f"{list_file} lists no sequences; expected lines like 00001/0266")
  return seqs


def _vimeo_frames(seq_root: Path, seq: str, indices: Sequence[int]) -> list[Path]:
  paths = [seq_root / seq / f"im{i}.png" for i in indices]
  missing = [str(p) for p in paths if not p.is_file()]
  if missing:
    raise ValueError(f"missing Vimeo frames {missing}; expected {VIMEO_LAYOUT}")
  return paths


def vimeo(lq_root: str | os.PathLike, gt_root: str | os.PathLike,
          list_file: str | os.PathLike | None = None) -> TestSet:
  """Vimeo-90K-T video SR: 7 LQ frames padded to 8 (last repeated), middle frame scored."""
  lq_seq_root, gt_seq_root = _seq_root(lq_root), _seq_root(gt_root)
  seqs = _read_list([gt_root, lq_root], list_file)

  def loader(seq: str) -> Callable[[], TestClip]:
    def load() -> TestClip:
      lq = video.read_images(_vimeo_frames(lq_seq_root, seq, range(1, 8)))
      lq = np.concatenate([lq, lq[-1:]], axis=0)
      gt = video.read_images(_vimeo_frames(gt_seq_root, seq, [4]))
      return TestClip(seq, lq, gt, [3], ["im4"])
    return load

  return TestSet(seqs, [loader(s) for s in seqs], kind="vimeo")


def vfi_vimeo(root: str | os.PathLike, list_file: str | os.PathLike | None = None) -> TestSet:
  """Vimeo-90K-T interpolation: input im1, im3, im5, im7; target im4."""
  seq_root = _seq_root(root)
  seqs = _read_list([root], list_file)

  def loader(seq: str) -> Callable[[], TestClip]:
    def load() -> TestClip:
      lq = video.read_images(_vimeo_frames(seq_root, seq, [1, 3, 5, 7]))
      gt = video.read_images(_vimeo_frames(seq_root, seq, [4]))
      return TestClip(seq, lq, gt, [0], ["im4"])
    return load

  return TestSet(seqs, [loader(s) for s in seqs], kind="vfi_vimeo")


def center_crop(frames: np.ndarray, height: int, width: int) -> np.ndarray:
  """torchvision CenterCrop offsets: int(round((size - crop) / 2)); (..., H, W, C) frames."""
  h, w = frames.shape[-3:-1]
  if h < height or w < width:
    raise ValueError(f"frames of size {(h, w)} are smaller than the crop {(height, width)}")
  top, left = int(round((h - height) / 2.0)), int(round((w - width) / 2.0))
  return frames[..., top:top + height, left:left + width, :]


def vfi_davis(root: str | os.PathLike, crop: tuple[int, int] = (480, 840)) -> TestSet:
  """DAVIS interpolation sets: frames s, s+2, s+4, s+6 in, s+3 out, for s = 0, 2, ..."""
  names, loaders = [], []
  for clip_dir in _subfolders(root, PAIRED_LAYOUT, "DAVIS"):
    paths = video.list_frames(clip_dir)
    for start in range(0, len(paths) - 6, 2):
      inputs = [paths[start + i] for i in (0, 2, 4, 6)]
      target = paths[start + 3]

      def load(inputs=inputs, target=target, name=f"{clip_dir.name}/{target.stem}") -> TestClip:
        lq = center_crop(video.read_images(inputs), *crop)
        gt = center_crop(video.read_images([target]), *crop)
        return TestClip(name, lq, gt, [0], [target.stem])

      names.append(f"{clip_dir.name}/{target.stem}")
      loaders.append(load)
  if not names:
    raise ValueError(f"no DAVIS clip in {root} has the 7 frames an interpolation set needs")
  return TestSet(names, loaders, kind="vfi_davis")


def vfi_ucf101(root: str | os.PathLike, crop: tuple[int, int] = (224, 224)) -> TestSet:
  """UCF101 interpolation triplets: frame0..frame3.png in, framet.png out."""
  clips = _subfolders(root, UCF_LAYOUT, "UCF101")

  def loader(clip_dir: Path) -> Callable[[], TestClip]:
    def load() -> TestClip:
      paths = [clip_dir / f"frame{i}.png" for i in range(4)] + [clip_dir / "framet.png"]
      missing = [str(p) for p in paths if not p.is_file()]
      if missing:
        raise ValueError(f"missing UCF101 frames {missing}; expected {UCF_LAYOUT}")
      frames = center_crop(video.read_images(paths), *crop)
      return TestClip(clip_dir.name, frames[:4], frames[4:], [0], ["framet"])
    return load

  return TestSet([p.name for p in clips], [loader(p) for p in clips], kind="vfi_ucf101")


def vfi(root: str | os.PathLike) -> TestSet:
  """Frame interpolation test set, the format recognised from the folder (Vimeo, UCF101, DAVIS)."""
  root = Path(root)
  if (root / "sequences").is_dir() or (root / "sep_testlist.txt").is_file():
    return vfi_vimeo(root)
  clips = _subfolders(root, f"{VIMEO_LAYOUT}, or {UCF_LAYOUT}, or {PAIRED_LAYOUT}", "VFI")
  if (clips[0] / "framet.png").is_file():
    return vfi_ucf101(root)
  return vfi_davis(root)
