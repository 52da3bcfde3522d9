"""TFDS builders for the VRT training layouts (array_record, no TensorFlow needed).

One builder, `vrt_frames`, with a config per layout and LQ variant. Each example is one frame
(`gt`, and `lq` where the config has LQ), written in clip order; the clip table (name, first
example, number of frames) of each split is stored in the dataset's metadata, so the pipeline reads
windows of consecutive frames by index, exactly as from folders.

Build from a local copy of the dataset (manual_dir = the folder that holds the layout's
sub-folders, e.g. .../REDS with train_sharp/ and train_sharp_bicubic/):

  builder = VrtFrames(config="reds_bi", data_dir="~/tensorflow_datasets")
  builder.download_and_prepare(file_format="array_record",
      download_config=tfds.download.DownloadConfig(manual_dir="/data/REDS"))

or `build(config, manual_dir, data_dir)`. Then set data.source='tfds', data.tfds_data_dir and
(optionally) data.tfds_config.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from vrt_jax.data import layouts


@dataclasses.dataclass
class VrtFramesConfig(tfds.core.BuilderConfig):
  """layout: one of layouts.LAYOUTS; gt / lq: sub-folders of manual_dir ('' lq = GT only)."""
  layout: str = "reds"
  gt: str = ""
  lq: str = ""
  test_gt: str = ""
  test_lq: str = ""


_CONFIGS = [
    VrtFramesConfig(name="reds", layout="reds", gt="train_sharp"),
    VrtFramesConfig(name="reds_bi", layout="reds", gt="train_sharp",
                    lq=os.path.join("train_sharp_bicubic", "X4")),
    VrtFramesConfig(name="reds_blur", layout="reds", gt="train_sharp", lq="train_blur"),
    VrtFramesConfig(name="vimeo", layout="vimeo", gt="vimeo_septuplet"),
    VrtFramesConfig(name="vimeo_bi", layout="vimeo", gt="vimeo_septuplet",
                    lq="vimeo_septuplet_matlabLRx4"),
    VrtFramesConfig(name="vimeo_bd", layout="vimeo", gt="vimeo_septuplet",
                    lq="vimeo_septuplet_BDLRx4"),
    VrtFramesConfig(name="gopro", layout="gopro", gt="train_GT", lq="train_GT_blurred",
                    test_gt="test_GT", test_lq="test_GT_blurred"),
    VrtFramesConfig(name="dvd", layout="dvd", gt="train_GT", lq="train_GT_blurred",
                    test_gt="test_GT", test_lq="test_GT_blurred"),
    VrtFramesConfig(name="davis", layout="davis", gt=os.path.join("JPEGImages", "480p")),
]
CONFIG_NAMES = tuple(c.name for c in _CONFIGS)


class VrtFrames(tfds.core.GeneratorBasedBuilder):
  """Frames of a VRT training dataset, one example per frame, in clip order."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = _CONFIGS
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Download the dataset yourself and pass its root as manual_dir: REDS (train_sharp/, "
      "train_sharp_bicubic/X4/, train_blur/), Vimeo-90K (vimeo_septuplet/ and its LR trees), "
      "GoPro or DVD (train_GT/, train_GT_blurred/, test_GT/, test_GT_blurred/), DAVIS "
      "(JPEGImages/480p/).")

  def _info(self) -> tfds.core.DatasetInfo:
    # Frames are stored as their original file bytes (PNG or JPEG): lossless and compact.
    fmt = "jpeg" if self.builder_config.layout in ("dvd", "davis") else "png"
    features = {"gt": tfds.features.Image(shape=(None, None, 3), encoding_format=fmt)}
    if self.builder_config.lq:
      features["lq"] = tfds.features.Image(shape=(None, None, 3), encoding_format=fmt)
    # disable_shuffling keeps the generation order, which the clip table indexes.
    return tfds.core.DatasetInfo(
        builder=self, description="VRT training frames, one example per frame.",
        features=tfds.features.FeaturesDict(features), disable_shuffling=True,
        metadata=tfds.core.MetadataDict())

  def _split_clips(self, manual_dir: str) -> dict[str, list[layouts.Clip]]:
    c = self.builder_config
    gt = os.path.join(manual_dir, c.gt)
    lq = os.path.join(manual_dir, c.lq) if c.lq else ""
    splits = {"train": layouts.find_clips(c.layout, gt, lq, split="train")}
    if c.layout in ("reds", "vimeo"):
      splits["test"] = layouts.find_clips(c.layout, gt, lq, split="test")
    elif c.test_gt and os.path.isdir(os.path.join(manual_dir, c.test_gt)):
      test_lq = os.path.join(manual_dir, c.test_lq) if c.test_lq else ""
      splits["test"] = layouts.find_clips(c.layout, os.path.join(manual_dir, c.test_gt), test_lq,
                                          split="train", exclude=())
    return splits

  def _split_generators(self, dl_manager):
    splits = self._split_clips(str(dl_manager.manual_dir))
    table = {}
    for split, clips in splits.items():
      start, rows = 0, []
      for clip in clips:
        rows.append([clip.name, start, len(clip.gt)])
        start += len(clip.gt)
      table[split] = rows
    self.info.metadata["clips"] = table
    return {split: self._generate_examples(clips) for split, clips in splits.items()}

  def _generate_examples(self, clips):
    index = 0
    for clip in clips:
      for i, path in enumerate(clip.gt):
        example = {"gt": _checked(path)}
        if clip.lq is not None:
          example["lq"] = _checked(clip.lq[i])
        yield index, example
        index += 1


def _checked(path: str) -> str:
  """The path of an RGB image file that decodes; raises BadSampleError naming it otherwise."""
  try:
    with Image.open(path) as im:
      mode = im.mode
      im.verify()
  except (OSError, ValueError, SyntaxError) as e:
    raise layouts.BadSampleError(f"Cannot decode image {path}: {e}") from e
  if mode != "RGB":
    raise layouts.BadSampleError(f"Image {path} is {mode}, expected RGB.")
  return path


def build(config: str, manual_dir: str, data_dir: str) -> VrtFrames:
  """Builds (if needed) the `vrt_frames/<config>` dataset from manual_dir into data_dir."""
  if config not in CONFIG_NAMES:
    raise ValueError(f"Unknown vrt_frames config {config!r}; expected one of {CONFIG_NAMES}.")
  builder = VrtFrames(config=config, data_dir=data_dir)
  builder.download_and_prepare(
      file_format="array_record",
      download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  return builder


def default_config(layout: str, degradation: str) -> str:
  """The config the pipeline reads for a layout: GT only, or with blurred LQ for deblurring."""
  if degradation == "blur":
    return {"reds": "reds_blur", "gopro": "gopro", "dvd": "dvd"}.get(layout, layout)
  return layout


class TfdsStore:
  """Random access to frames of a prepared `vrt_frames` dataset (FolderStore's interface).

  The TFDS data source is opened lazily so the store pickles cheaply into grain workers.
  """

  def __init__(self, config: str, data_dir: str, *, split: str = "train"):
    if config not in CONFIG_NAMES:
      raise ValueError(f"Unknown vrt_frames config {config!r}; expected one of {CONFIG_NAMES}.")
    if not data_dir:
      raise ValueError("data.source='tfds' needs data.tfds_data_dir.")
    self.config, self.data_dir, self.split = config, data_dir, split
    builder = VrtFrames(config=config, data_dir=data_dir)
    if not builder.is_prepared():
      raise FileNotFoundError(f"vrt_frames/{config} is not prepared in {data_dir}; build it with "
                              f"vrt_jax.data.tfds_builders.build({config!r}, manual_dir, "
                              f"{data_dir!r}).")
    table = builder.info.metadata.get("clips", {})
    if split not in table:
      raise ValueError(f"vrt_frames/{config} has no {split!r} split (has {sorted(table)}).")
    self.clips = [(str(n), int(s), int(c)) for n, s, c in table[split]]
    self._has_lq = bool(builder.builder_config.lq)
    self._source = None

  def __getstate__(self):
    state = dict(self.__dict__)
    state["_source"] = None
    return state

  def _data_source(self):
    if self._source is None:
      self._source = tfds.data_source(f"vrt_frames/{self.config}", data_dir=self.data_dir,
                                      split=self.split)
    return self._source

  def __len__(self) -> int:
    return len(self.clips)

  def clip_name(self, clip: int) -> str:
    return self.clips[clip][0]

  def clip_length(self, clip: int) -> int:
    return self.clips[clip][2]

  def has_lq(self) -> bool:
    return self._has_lq

  def load(self, clip: int, frames, *, lq: bool) -> tuple[np.ndarray, np.ndarray | None]:
    source = self._data_source()
    start = self.clips[clip][1]
    records = [source[start + f] for f in frames]
    gt = np.stack([r["gt"] for r in records]).astype(np.float32) / 255.0
    lq_frames = (np.stack([r["lq"] for r in records]).astype(np.float32) / 255.0) if lq else None
    return gt, lq_frames

  def describe(self, clip: int, frame: int) -> str:
    return f"vrt_frames/{self.config}:{self.split} clip {self.clips[clip][0]} frame {frame}"
