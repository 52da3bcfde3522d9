"""Embedded synthetic video data: real photographs moved by a smooth random camera.

Needs no download: the photographs are the sample images that ship inside the scikit-image wheel
(skimage/data/*.png, *.jpg; read straight from the installed package, never through its
network fetcher). A clip is a virtual camera gliding over one photograph: sub-pixel translation
with constant acceleration, a slow zoom and a slight rotation, rendered by bilinear sampling.
Blurred clips average consecutive sharp sub-frames, the way GoPro and DVD were made from 240 fps
video, and pair each blurred frame with the middle sub-frame.

Train and test clips come from disjoint photographs, so evaluation clips are never training clips.
Everything is deterministic in the seed.
"""

from __future__ import annotations

import functools
import importlib.util
import os

import numpy as np
from PIL import Image

from vrt_jax.data import degrade
from vrt_jax.data.imresize import imresize

# Photographs of natural scenes and textures, at most 741 pixels a side (bigger ones, e.g.
# retina.jpg, cost seconds to load and shrink in every data worker).
TRAIN_IMAGES = ("astronaut.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "ihc.png",
                "brick.png", "grass.png", "gravel.png")
TEST_IMAGES = ("chelsea.png", "camera.png")
_LEVELS = (1.0, 0.75, 0.5)   # photo pre-shrink factors (antialiased), picked per clip
_SPLIT_ID = {"train": 0, "test": 1}


def image_dir() -> str:
  """The folder of scikit-image's bundled sample photographs."""
  spec = importlib.util.find_spec("skimage")
  if spec is None or not spec.submodule_search_locations:
    raise ImportError("Synthetic clips need the photographs bundled with scikit-image: "
                      "pip install scikit-image")
  return os.path.join(list(spec.submodule_search_locations)[0], "data")


@functools.lru_cache(maxsize=32)
def load_photo(name: str, level: float = 1.0) -> np.ndarray:
  """A bundled photograph as float32 RGB (H, W, 3) in [0, 1], shrunk by `level` (MATLAB bicubic)."""
  path = os.path.join(image_dir(), name)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"Bundled photograph {path} is missing from the scikit-image install.")
  with Image.open(path) as im:
    photo = np.asarray(im.convert("RGB"), np.float32) / 255.0
  if level != 1.0:
    photo = np.clip(imresize(photo, level), 0.0, 1.0).astype(np.float32)
  return photo


def _bilinear(photo: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
  """Samples photo (H, W, C) at float coordinates ys, xs (any shape) -> (..., C)."""
  h, w = photo.shape[:2]
  y0 = np.clip(np.floor(ys).astype(np.int64), 0, h - 2)
  x0 = np.clip(np.floor(xs).astype(np.int64), 0, w - 2)
  fy = np.clip(ys - y0, 0.0, 1.0)[..., None].astype(np.float32)
  fx = np.clip(xs - x0, 0.0, 1.0)[..., None].astype(np.float32)
  top = photo[y0, x0] * (1 - fx) + photo[y0, x0 + 1] * fx
  bottom = photo[y0 + 1, x0] * (1 - fx) + photo[y0 + 1, x0 + 1] * fx
  return top * (1 - fy) + bottom * fy


def render(seed: int, *, num_frames: int, size: int, split: str = "train",
           sub_per_frame: int = 1) -> np.ndarray:
  """Renders num_frames * sub_per_frame sharp frames (N, size, size, 3) of one camera path.

  Sub-frame k of frame t is taken at time t + (k - (sub_per_frame - 1) / 2) / sub_per_frame
  (in frames), so the middle sub-frame of each group is at the frame's own time.
  """
  if split not in _SPLIT_ID:
    raise ValueError(f"split must be 'train' or 'test', got {split!r}.")
  if num_frames < 1 or size < 8:
    raise ValueError(f"Need num_frames >= 1 and size >= 8, got {num_frames}, {size}.")
  rng = np.random.default_rng([_SPLIT_ID[split], seed])
  names = TRAIN_IMAGES if split == "train" else TEST_IMAGES
  name = names[rng.integers(len(names))]
  level = _LEVELS[rng.integers(len(_LEVELS))]
  # Shrink only photos that stay comfortably larger than the clip.
  full = load_photo(name).shape[:2]
  level = max(level, min(1.0, 2.0 * size / min(full)))
  photo = load_photo(name, level)
  h, w = photo.shape[:2]

  # Smooth camera path, in photo pixels per frame: velocity, acceleration, zoom rate, spin.
  angle = rng.uniform(0, 2 * np.pi)
  speed = rng.uniform(0.3, 3.0)
  vel = speed * np.array([np.sin(angle), np.cos(angle)])
  acc = rng.normal(0.0, 0.15, size=2)
  zoom0, zoom_rate = rng.uniform(0.9, 1.1), rng.uniform(-0.01, 0.01)
  theta0, spin = rng.uniform(-0.1, 0.1), rng.uniform(-0.01, 0.01)

  s = sub_per_frame
  times = (np.arange(num_frames * s) // s + ((np.arange(num_frames * s) % s) - (s - 1) / 2) / s)
  shift = vel[None] * times[:, None] + 0.5 * acc[None] * times[:, None] ** 2   # (N, 2)
  zoom = zoom0 * np.exp(zoom_rate * times)
  theta = theta0 + spin * times

  # Keep the whole path inside the photo: slow the camera down if the path would not fit, then
  # pick the start centre in the feasible box.
  radius = zoom.max() * (size / 2.0) * np.sqrt(2.0) + 2.0
  room = np.array([h, w]) - 1 - 2 * radius
  if np.any(room < 0):
    raise ValueError(f"Photo {name} ({h}x{w}) is too small for {size}x{size} clips; use a "
                     f"smaller size.")
  extent = shift.max(axis=0) - shift.min(axis=0)
  shift = shift * min(1.0, float(np.min(room / np.maximum(extent, 1e-9))))
  lo = radius - shift.min(axis=0)
  hi = np.array([h, w]) - 1 - radius - shift.max(axis=0)
  centre = rng.uniform(lo, np.maximum(hi, lo))

  grid = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
  gy, gx = np.meshgrid(grid, grid, indexing="ij")
  cos, sin = np.cos(theta)[:, None, None], np.sin(theta)[:, None, None]
  z = zoom[:, None, None]
  ys = centre[0] + shift[:, 0, None, None] + z * (cos * gy - sin * gx)
  xs = centre[1] + shift[:, 1, None, None] + z * (sin * gy + cos * gx)
  return _bilinear(photo, ys, xs)


def _quantize(x: np.ndarray) -> np.ndarray:
  # Real datasets are 8-bit files; keep the synthetic ones on the same grid.
  return (np.round(np.clip(x, 0.0, 1.0) * 255.0) / 255.0).astype(np.float32)


def make_clip(seed: int, *, num_frames: int, size: int, split: str = "train") -> np.ndarray:
  """A sharp GT clip (num_frames, size, size, 3) float32 in [0, 1], 8-bit levels."""
  return _quantize(render(seed, num_frames=num_frames, size=size, split=split))


def make_blurred_clip(seed: int, *, num_frames: int, size: int, split: str = "train",
                      sub_per_frame: int = 7) -> tuple[np.ndarray, np.ndarray]:
  """(blurred, sharp), both (num_frames, size, size, 3): GoPro-style averaged sub-frames."""
  sub = render(seed, num_frames=num_frames, size=size, split=split, sub_per_frame=sub_per_frame)
  blurred, sharp = degrade.motion_blur(sub, sub_per_frame)
  return _quantize(blurred), _quantize(sharp)


class SyntheticStore:
  """Random access to synthetic clips, with the same interface as `layouts.FolderStore`.

  Clip i is rendered from seed (seed * 1_000_003 + i); with `blur`, LQ is the motion-blurred clip.
  """

  def __init__(self, *, num_clips: int, num_frames: int, size: int, split: str = "train",
               blur: bool = False, seed: int = 0):
    if num_clips < 1:
      raise ValueError(f"synthetic_clips must be >= 1, got {num_clips}.")
    self.num_clips, self.num_frames, self.size = num_clips, num_frames, size
    self.split, self.blur, self.seed = split, blur, seed

  def __len__(self) -> int:
    return self.num_clips

  def clip_name(self, clip: int) -> str:
    return f"synthetic_{self.split}_{clip:05d}"

  def clip_length(self, clip: int) -> int:
    return self.num_frames

  def has_lq(self) -> bool:
    return self.blur

  def _seed(self, clip: int) -> int:
    return self.seed * 1_000_003 + clip

  def load(self, clip: int, frames, *, lq: bool) -> tuple[np.ndarray, np.ndarray | None]:
    frames = list(frames)
    kw = dict(num_frames=self.num_frames, size=self.size, split=self.split)
    if self.blur:
      blurred, sharp = make_blurred_clip(self._seed(clip), **kw)
      return sharp[frames], (blurred[frames] if lq else None)
    if lq:
      raise ValueError("Synthetic clips have LQ frames only for motion blur.")
    return make_clip(self._seed(clip), **kw)[frames], None

  def describe(self, clip: int, frame: int) -> str:
    return f"{self.clip_name(clip)} frame {frame}"
