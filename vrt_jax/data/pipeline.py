"""grain training pipelines for VRT: the KAIR recipe over folders, TFDS or synthetic clips.

A training sample follows KAIR's `VideoRecurrentTrain*Dataset`s:
  1. a key is a frame of a clip (every frame is a key for REDS / GoPro / DVD / DAVIS; each
     septuplet is one key for Vimeo-90K); a window of `num_frames` starts there, or at a random
     frame when it would run past the clip's end;
  2. Vimeo-90K takes the middle `num_frames` (at most 7) of the septuplet and, for 8 frames,
     repeats the last one (KAIR's pad_sequence); interpolation takes frames 1, 3, 5, 7 as input
     and frame 4 as the target;
  3. random temporal reverse (KAIR enables it for Vimeo-90K only);
  4. LQ from disk, or made from GT: BI (MATLAB bicubic), BD (Gaussian 1.6 + subsample);
  5. random crop of `gt_patch` GT pixels and gt_patch / scale LQ pixels at the same place;
  6. the same random flips / transposition (8 orientations) for every LQ and GT frame;
  7. colour jitter (torchvision ColorJitter(0.05, 0.05, 0.05, 0.05), KAIR's interpolation recipe);
  8. denoising: sigma ~ U[sigma_range] / 255 per clip, Gaussian noise, not clipped, noise map
     appended as a 4th LQ channel.

Config keys read from `data_cfg` (ConfigDict or dict): `DATA_DEFAULTS` lists every one with its
default, the only place the defaults are written; every config's `data` starts from it
(configs/common.py). All are optional except the roots of 'folders'.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import grain
import numpy as np
from absl import logging

from vrt_jax.data import degrade, layouts, synthetic

SOURCES = ("synthetic", "folders", "tfds")
DEGRADATIONS = ("bi", "bd", "blur", "noise", "vfi", "none")
_VFI_SPAN = 7          # interpolation windows: frames 1..7, inputs 1, 3, 5, 7, target 4
_MARGIN = 4            # LQ pixels of context kept around a crop that is downsampled on the fly
_MAX_SUBSTITUTES = 20  # bad samples replaced in a row before giving up


# Every data option and its default. None: derived from the others (scale: 4 for bi / bd, else 1;
# reverse: on for Vimeo-90K, as KAIR; color_jitter: on for interpolation; val_frames: num_frames;
# exclude_clips: the layout's held-out clips, e.g. REDS4). Options and roots:
#   source 'synthetic' | 'folders' | 'tfds'; layout 'reds' | 'vimeo' | 'gopro' | 'dvd' | 'davis';
#   gt_root, lq_root ('' = LQ made on the fly); tfds_config (vrt_frames config; '' = the layout's
#   GT-only config, its blurred one for deblurring); degradation 'bi' | 'bd' | 'blur' | 'noise' |
#   'vfi' | 'none'; sigma_range (training noise, 0-255); val_sigma (validation noise);
#   skip_bad_samples (False: an unreadable image stops training; True: log it, take another).
DATA_DEFAULTS: dict[str, Any] = dict(
    source="synthetic", layout="reds", gt_root="", lq_root="", tfds_data_dir="", tfds_config="",
    degradation="bi", scale=None, num_frames=6, gt_patch=64, sigma_range=(0.0, 50.0), flip=True,
    rotate=True, reverse=None, color_jitter=None, num_workers=0, synthetic_clips=64,
    val_clips=2, val_frames=None, val_size=64, val_sigma=30.0, val_gt_root="", val_lq_root="",
    exclude_clips=None, skip_bad_samples=False)


@dataclasses.dataclass(frozen=True)
class DataSettings:
  """The data config, resolved to concrete values (picklable for grain workers).

  Field defaults are `DATA_DEFAULTS`' (derived ones as for an SR clip of the reds layout).
  """
  source: str = DATA_DEFAULTS["source"]
  layout: str = DATA_DEFAULTS["layout"]
  gt_root: str = DATA_DEFAULTS["gt_root"]
  lq_root: str = DATA_DEFAULTS["lq_root"]
  tfds_data_dir: str = DATA_DEFAULTS["tfds_data_dir"]
  tfds_config: str = DATA_DEFAULTS["tfds_config"]
  degradation: str = DATA_DEFAULTS["degradation"]
  scale: int = 4
  num_frames: int = DATA_DEFAULTS["num_frames"]
  gt_patch: int = DATA_DEFAULTS["gt_patch"]
  sigma_range: tuple[float, float] = DATA_DEFAULTS["sigma_range"]
  flip: bool = DATA_DEFAULTS["flip"]
  rotate: bool = DATA_DEFAULTS["rotate"]
  reverse: bool = False
  color_jitter: bool = False
  num_workers: int = DATA_DEFAULTS["num_workers"]
  synthetic_clips: int = DATA_DEFAULTS["synthetic_clips"]
  val_clips: int = DATA_DEFAULTS["val_clips"]
  val_frames: int = DATA_DEFAULTS["num_frames"]
  val_size: int = DATA_DEFAULTS["val_size"]
  val_sigma: float = DATA_DEFAULTS["val_sigma"]
  val_gt_root: str = DATA_DEFAULTS["val_gt_root"]
  val_lq_root: str = DATA_DEFAULTS["val_lq_root"]
  exclude_clips: tuple[str, ...] | None = DATA_DEFAULTS["exclude_clips"]

  @property
  def vimeo(self) -> bool:
    return self.layout == "vimeo" and self.source != "synthetic"

  @property
  def downsample(self) -> bool:
    return self.degradation in ("bi", "bd")


def settings_from_config(data_cfg: Any) -> DataSettings:
  """Reads the data config (ConfigDict or dict) over `DATA_DEFAULTS`; ValueError on bad values."""
  given = dict(data_cfg.items())
  unknown = sorted(set(given) - set(DATA_DEFAULTS))
  if unknown:
    raise ValueError(f"unknown data option(s) {', '.join(unknown)}; the options are "
                     f"{', '.join(DATA_DEFAULTS)} (vrt_jax.data.pipeline.DATA_DEFAULTS)")
  c = {**DATA_DEFAULTS, **{k: v for k, v in given.items() if v is not None}}
  degradation = c["degradation"]
  if degradation not in DEGRADATIONS:
    raise ValueError(f"data.degradation must be one of {DEGRADATIONS}, got {degradation!r}.")
  source = c["source"]
  if source not in SOURCES:
    raise ValueError(f"data.source must be one of {SOURCES}, got {source!r}.")
  layout = c["layout"] or DATA_DEFAULTS["layout"]
  if source != "synthetic" and layout not in layouts.LAYOUTS:
    raise ValueError(f"data.layout must be one of {layouts.LAYOUTS}, got {layout!r}.")
  scale = int(c["scale"] if c["scale"] is not None else 4 if degradation in ("bi", "bd") else 1)
  num_frames = int(c["num_frames"])
  gt_patch = int(c["gt_patch"])
  if degradation in ("bi", "bd") and scale < 2:
    raise ValueError(f"data.scale must be >= 2 for {degradation!r}, got {scale}.")
  if degradation not in ("bi", "bd") and scale != 1:
    raise ValueError(f"data.scale must be 1 for {degradation!r}, got {scale}.")
  if gt_patch % scale:
    raise ValueError(f"data.gt_patch ({gt_patch}) must be a multiple of data.scale ({scale}).")
  if layout == "vimeo" and source != "synthetic" and degradation != "vfi" and num_frames > 8:
    raise ValueError(f"Vimeo-90K septuplets give at most 7 frames (8 with the last repeated), "
                     f"got num_frames={num_frames}.")
  sigma_range = tuple(float(s) for s in c["sigma_range"])
  if len(sigma_range) != 2 or sigma_range[0] > sigma_range[1] or sigma_range[0] < 0:
    raise ValueError(f"data.sigma_range must be (min, max) with 0 <= min <= max, got "
                     f"{sigma_range}.")
  exclude = c["exclude_clips"]
  derived = dict(reverse=layout == "vimeo", color_jitter=degradation == "vfi",
                 val_frames=num_frames)
  c.update({k: v for k, v in derived.items() if c[k] is None})
  return DataSettings(
      source=source, layout=layout, gt_root=c["gt_root"] or "", lq_root=c["lq_root"] or "",
      tfds_data_dir=c["tfds_data_dir"] or "", tfds_config=c["tfds_config"] or "",
      degradation=degradation, scale=scale, num_frames=num_frames, gt_patch=gt_patch,
      sigma_range=sigma_range, flip=bool(c["flip"]), rotate=bool(c["rotate"]),
      reverse=bool(c["reverse"]), color_jitter=bool(c["color_jitter"]),
      num_workers=int(c["num_workers"]), synthetic_clips=int(c["synthetic_clips"]),
      val_clips=int(c["val_clips"]), val_frames=int(c["val_frames"]),
      val_size=int(c["val_size"]), val_sigma=float(c["val_sigma"]),
      val_gt_root=c["val_gt_root"] or "", val_lq_root=c["val_lq_root"] or "",
      exclude_clips=None if exclude is None else tuple(exclude))


# ------------------------------------------------------------------------------------------------
# Stores and keys.
# ------------------------------------------------------------------------------------------------
def batch_shapes(data_cfg: Any, batch_size: int) -> dict[str, tuple[int, ...]]:
  """The shapes of a training batch: {"lq": (B, T, p / s, p / s, Cin), "gt": (B, T_out, p, p, 3)}.

  What `make_train_loader` yields for this data config (frame interpolation: 4 input frames,
  1 target; denoising: the noise map as a 4th input channel), without reading any data.
  """
  s = settings_from_config(data_cfg)
  p = s.gt_patch
  if s.degradation == "vfi":
    return {"lq": (batch_size, 4, p, p, 3), "gt": (batch_size, 1, p, p, 3)}
  lq_p = p // s.scale if s.downsample else p
  cin = 4 if s.degradation == "noise" else 3
  return {"lq": (batch_size, s.num_frames, lq_p, lq_p, cin),
          "gt": (batch_size, s.num_frames, p, p, 3)}


def _lq_on_disk(s: DataSettings) -> bool:
  return s.degradation in ("bi", "bd", "blur") and bool(s.lq_root)


def _synthetic_frames(s: DataSettings, num_frames: int) -> int:
  if s.degradation == "vfi":
    return _VFI_SPAN
  return num_frames


def make_store(s: DataSettings, *, split: str = "train", seed: int = 0):
  """The frame store of the configured source: `layouts.FolderStore`, `SyntheticStore`, ...."""
  if s.degradation == "blur" and s.source == "folders" and not s.lq_root:
    raise ValueError("Deblurring needs blurred LQ frames: set data.lq_root (e.g. "
                     "GoPro/train_GT_blurred or REDS/train_blur).")
  if s.source == "synthetic":
    train = split == "train"
    return synthetic.SyntheticStore(
        num_clips=s.synthetic_clips if train else max(s.val_clips, 1),
        num_frames=_synthetic_frames(s, s.num_frames if train else s.val_frames),
        size=s.gt_patch if train else s.val_size, split=split, blur=s.degradation == "blur",
        seed=seed)
  if s.source == "folders":
    if not s.gt_root:
      raise ValueError(f"data.source='folders' needs data.gt_root; the {s.layout} layout is "
                       f"{layouts.expected_layout(s.layout)}.")
    clips = layouts.find_clips(s.layout, s.gt_root, s.lq_root if _lq_on_disk(s) else "",
                               split=split, exclude=s.exclude_clips)
    return layouts.FolderStore(clips)
  from vrt_jax.data import tfds_builders  # TFDS import is slow; only for this source.
  config = s.tfds_config or tfds_builders.default_config(s.layout, s.degradation)
  return tfds_builders.TfdsStore(config, s.tfds_data_dir, split=split)


def make_keys(store, s: DataSettings) -> np.ndarray:
  """(N, 2) int array of (clip, start frame) training keys, as KAIR enumerates them."""
  per_frame = s.source != "synthetic" and s.layout != "vimeo"
  keys = []
  for c in range(len(store)):
    starts = range(store.clip_length(c)) if per_frame else (0,)
    keys.extend((c, f) for f in starts)
  return np.asarray(keys, np.int64).reshape(-1, 2)


# ------------------------------------------------------------------------------------------------
# Sample construction.
# ------------------------------------------------------------------------------------------------
def _window(s: DataSettings, store, clip: int, start: int, rng: np.random.Generator,
            num_frames: int) -> tuple[list[int], list[int]]:
  """Frame positions (inputs, extra GT target) for a key; the target list is empty except VFI."""
  length = store.clip_length(clip)
  if s.vimeo and s.degradation != "vfi":
    n = min(num_frames, 7)
    return [i + (length - n) // 2 for i in range(n)], []
  span = _VFI_SPAN if s.degradation == "vfi" else num_frames
  if length < span:
    raise layouts.BadSampleError(f"Clip {store.describe(clip, 0)} has {length} frames, fewer "
                                 f"than the {span} a sample needs.")
  if start > length - span:
    start = int(rng.integers(0, length - span + 1))
  if s.degradation == "vfi":
    return [start, start + 2, start + 4, start + 6], [start + 3]
  return list(range(start, start + span)), []


def _degrade(s: DataSettings, gt: np.ndarray) -> np.ndarray:
  if s.degradation == "bi":
    return degrade.bicubic_downsample(gt, s.scale).astype(np.float32)
  if s.degradation == "bd":
    return degrade.blur_downsample(gt, s.scale).astype(np.float32)
  return gt


def _crop(s: DataSettings, gt: np.ndarray, lq: np.ndarray | None, rng: np.random.Generator,
          where: str, patch: int) -> tuple[np.ndarray, np.ndarray]:
  """Aligned random crop: GT `patch` pixels, LQ patch / scale pixels at the same place.

  With `lq` None and a downsampling degradation, the LQ is made from the GT crop plus a margin
  of _MARGIN LQ pixels (clamped at the frame border), which gives exactly the LQ that the whole
  frame would give at that place: the crop sits on the LQ pixel grid and the antialiased kernel
  reaches less than the margin.
  """
  scale = s.scale
  lq_patch = patch // scale
  h, w = gt.shape[1] // scale, gt.shape[2] // scale   # LQ size (GT modcropped to the scale)
  if lq is not None and (lq.shape[1:3] != (h, w) or gt.shape[1:3] != (h * scale, w * scale)):
    raise layouts.BadSampleError(f"GT {gt.shape[1:3]} is not {scale}x the LQ {lq.shape[1:3]} "
                                 f"at {where}.")
  if h < lq_patch or w < lq_patch:
    raise layouts.BadSampleError(f"Frames {gt.shape[1:3]} at {where} are smaller than the "
                                 f"GT patch {patch}.")
  top = int(rng.integers(0, h - lq_patch + 1))
  left = int(rng.integers(0, w - lq_patch + 1))
  gt_crop = gt[:, top * scale:(top + lq_patch) * scale, left * scale:(left + lq_patch) * scale]
  if lq is not None:
    return gt_crop, lq[:, top:top + lq_patch, left:left + lq_patch]
  if not s.downsample:
    return gt_crop, gt_crop
  t0, l0 = max(top - _MARGIN, 0), max(left - _MARGIN, 0)
  t1, l1 = min(top + lq_patch + _MARGIN, h), min(left + lq_patch + _MARGIN, w)
  region = gt[:, t0 * scale:t1 * scale, l0 * scale:l1 * scale]
  small = _degrade(s, region)
  return gt_crop, small[:, top - t0:top - t0 + lq_patch, left - l0:left - l0 + lq_patch]


def _augment(arrays: Sequence[np.ndarray], rng: np.random.Generator, flip: bool,
             rotate: bool) -> list[np.ndarray]:
  """KAIR's augment: h-flip, v-flip, transpose (p = 0.5 each), the same for all (T, H, W, C)."""
  hflip = flip and rng.random() < 0.5
  vflip = rotate and rng.random() < 0.5
  rot90 = rotate and rng.random() < 0.5
  out = []
  for a in arrays:
    if hflip:
      a = a[:, :, ::-1]
    if vflip:
      a = a[:, ::-1]
    if rot90:
      a = a.transpose(0, 2, 1, 3)
    out.append(a)
  return out


def make_sample(s: DataSettings, store, clip: int, start: int, rng: np.random.Generator, *,
                patch: int | None = None, num_frames: int | None = None,
                augment: bool = True) -> dict[str, np.ndarray]:
  """One training sample: dict(lq=(T, p / s, p / s, Cin), gt=(T_out, p, p, 3)) float32."""
  num_frames = s.num_frames if num_frames is None else num_frames
  inputs, target = _window(s, store, clip, start, rng, num_frames)
  if s.reverse and augment and rng.random() < 0.5:
    inputs = inputs[::-1]
  lq_disk = store.has_lq() and s.degradation in ("bi", "bd", "blur")
  gt, lq = store.load(clip, inputs + target, lq=lq_disk)
  where = store.describe(clip, inputs[0])
  if s.degradation == "vfi":
    lq, gt = gt[:len(inputs)], gt[len(inputs):]
    # Crop inputs and target together: stack them as frames of one clip.
    both, _ = _crop(s, np.concatenate([lq, gt]), None, rng, where, patch or s.gt_patch)
    lq, gt = both[:len(inputs)], both[len(inputs):]
  else:
    gt, lq = _crop(s, gt, lq, rng, where, patch or s.gt_patch)
  if augment:
    lq, gt = _augment([lq, gt], rng, s.flip, s.rotate)
    if s.color_jitter:
      # One jitter draw for LQ and GT alike.
      jitter_seed = int(rng.integers(2**62))
      lq = degrade.color_jitter(lq, np.random.default_rng(jitter_seed))
      gt = degrade.color_jitter(gt, np.random.default_rng(jitter_seed))
  if s.degradation == "noise":
    sigma = rng.uniform(*s.sigma_range) / 255.0
    lq = degrade.add_noise(gt, sigma, rng)
  if s.vimeo and s.degradation != "vfi" and num_frames == 8:
    lq = np.concatenate([lq, lq[-1:]])
    gt = np.concatenate([gt, gt[-1:]])
  return {"lq": np.ascontiguousarray(lq, np.float32), "gt": np.ascontiguousarray(gt, np.float32)}


class _Indices:
  """grain data source whose records are their own indices (the keys live in the transform).

  grain checks repr(data_source) when restoring an iterator, so the repr names what the keys
  index: a checkpoint restores only onto the same kind and number of training keys.
  """

  def __init__(self, n: int, description: str):
    self._n, self._description = n, description

  def __repr__(self) -> str:
    return f"TrainKeys(n={self._n}, {self._description})"

  def __len__(self) -> int:
    return self._n

  def __getitem__(self, i: int) -> int:
    return int(i)


class TrainSample(grain.transforms.RandomMap):
  """Key index -> training sample; optionally replaces samples with unreadable images."""

  def __init__(self, settings: DataSettings, store, keys: np.ndarray, skip_bad_samples: bool):
    self.settings, self.store, self.keys = settings, store, keys
    self.skip_bad_samples = skip_bad_samples

  def random_map(self, element: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    index = int(element)
    for _ in range(_MAX_SUBSTITUTES):
      clip, start = (int(v) for v in self.keys[index])
      try:
        return make_sample(self.settings, self.store, clip, start, rng)
      except layouts.BadSampleError as e:
        if not self.skip_bad_samples:
          raise
        substitute = int(rng.integers(len(self.keys)))
        logging.warning("Skipping bad training sample (%s); using key %d instead.", e,
                        substitute)
        index = substitute
    raise RuntimeError(f"{_MAX_SUBSTITUTES} bad training samples in a row; check the dataset.")


def make_train_loader(data_cfg: Any, *, batch_size: int, seed: int, process_index: int = 0,
                      process_count: int = 1, skip_bad_samples: bool | None = None,
                      shuffle_seed: int | None = None) -> grain.DataLoader:
  """A grain DataLoader of endless shuffled training batches for this process.

  Yields dicts of float32 numpy arrays: `lq` (batch_size, T, h, w, Cin) and `gt`
  (batch_size, T_out, H, W, 3); T_out = 1 for interpolation. `batch_size` is per process; keys are
  sharded by process. The iterator's state saves and restores with grain.checkpoint.
  shuffle_seed: the order's seed (default `seed`, which also makes synthetic clips).

  A missing or undecodable image raises `layouts.BadSampleError` naming the file; with
  `skip_bad_samples` (default: the config's `data.skip_bad_samples`) the sample is
  logged as a warning and replaced by another random key instead.
  """
  if skip_bad_samples is None:
    skip_bad_samples = bool(data_cfg.get("skip_bad_samples",
                                         DATA_DEFAULTS["skip_bad_samples"]))
  s = settings_from_config(data_cfg)
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
  store = make_store(s, split="train", seed=seed)
  keys = make_keys(store, s)
  if len(keys) < process_count:
    raise ValueError(f"{len(keys)} training keys cannot be sharded over {process_count} "
                     f"processes.")
  sampler = grain.samplers.IndexSampler(
      num_records=len(keys),
      shard_options=grain.sharding.ShardOptions(shard_index=process_index,
                                                shard_count=process_count, drop_remainder=True),
      shuffle=True, num_epochs=None, seed=seed if shuffle_seed is None else shuffle_seed)
  return grain.DataLoader(
      data_source=_Indices(len(keys), f"source={s.source}, layout={s.layout}, "
                                      f"degradation={s.degradation}"),
      sampler=sampler,
      operations=[TrainSample(s, store, keys, skip_bad_samples),
                  grain.transforms.Batch(batch_size, drop_remainder=True)],
      worker_count=s.num_workers)


def make_val_clips(data_cfg: Any, *, num_clips: int, seed: int, split: str = "test"
                   ) -> list[dict[str, Any]]:
  """Held-out validation clips: dict(lq=(T, h, w, Cin), gt=(T_out, H, W, 3), name=str).

  Synthetic clips come from photographs never used for training; folder and TFDS sources use the
  layout's held-out partition (REDS4, sep_testlist.txt) or `val_gt_root` / `val_lq_root`. Each
  clip is its first `val_frames` frames (a septuplet for Vimeo-90K, padded to 8 when val_frames is
  8; frames 1, 3, 5, 7 -> 4 for interpolation), centre-cropped to `val_size` GT pixels (0 keeps
  the frame, cut to a multiple of 8 * scale). BI / BD are applied to the whole frame before
  cropping, as the official LR sets were made; noise has std val_sigma / 255 and is seeded.

  split="train" makes clips the same way from the training data instead (e.g. to tune classical
  baselines without looking at the held-out clips).
  """
  if split not in ("train", "test"):
    raise ValueError(f"split must be 'train' or 'test', got {split!r}.")
  s = settings_from_config(data_cfg)
  if split == "train":
    # Synthetic training clips rendered at the validation length and size.
    s = dataclasses.replace(s, num_frames=s.val_frames, gt_patch=s.val_size or s.gt_patch,
                            synthetic_clips=num_clips)
  elif s.source == "folders" and s.val_gt_root:
    # A dedicated validation root: every clip in it.
    s = dataclasses.replace(s, gt_root=s.val_gt_root, lq_root=s.val_lq_root or s.lq_root,
                            exclude_clips=())
    split = "train"
  elif s.source == "folders" and s.layout not in ("reds", "vimeo"):
    raise ValueError(f"The {s.layout} training layout has no held-out clips; set "
                     f"data.val_gt_root (and data.val_lq_root) to its test folders.")
  store = make_store(dataclasses.replace(s, val_clips=num_clips), split=split, seed=seed)
  clips = []
  for i in range(min(num_clips, len(store))):
    sample = _val_sample(s, store, i, np.random.default_rng([seed, i]))
    sample["name"] = store.clip_name(i)
    clips.append(sample)
  return clips


def _val_sample(s: DataSettings, store, clip: int, rng: np.random.Generator
                ) -> dict[str, np.ndarray]:
  num_frames = min(s.val_frames, store.clip_length(clip))
  if s.vimeo and s.val_frames == 8:
    num_frames = 8
  inputs, target = _window(s, store, clip, 0, rng, num_frames)
  lq_disk = store.has_lq() and s.degradation in ("bi", "bd", "blur")
  gt, lq = store.load(clip, inputs + target, lq=lq_disk)
  if s.degradation == "vfi":
    lq, gt = gt[:len(inputs)], gt[len(inputs):]
  scale = s.scale
  h, w = gt.shape[1] // scale, gt.shape[2] // scale
  gt = gt[:, :h * scale, :w * scale]
  if lq is None:
    lq = _degrade(s, gt) if s.downsample else gt
  if lq.shape[1:3] != (h, w):
    raise ValueError(f"GT {gt.shape[1:3]} is not {scale}x the LQ {lq.shape[1:3]} at "
                     f"{store.describe(clip, inputs[0])}.")
  p = (s.val_size if s.val_size > 0 else min(h, w) * scale) // scale
  p = min(p, h, w)
  p -= p % 8 if p >= 8 else 0
  top, left = (h - p) // 2, (w - p) // 2
  lq = lq[:, top:top + p, left:left + p]
  gt = gt[:, top * scale:(top + p) * scale, left * scale:(left + p) * scale]
  if s.degradation == "noise":
    lq = degrade.add_noise(gt, s.val_sigma / 255.0, rng)
  if s.vimeo and s.degradation != "vfi" and num_frames == 8:
    lq, gt = np.concatenate([lq, lq[-1:]]), np.concatenate([gt, gt[-1:]])
  return {"lq": np.ascontiguousarray(lq, np.float32), "gt": np.ascontiguousarray(gt, np.float32)}
