"""Frame and video IO: frame folders (PNG/JPEG, sorted by name) and video files via PyAV.

Frames are (H, W, 3) RGB float32 in [0, 1]. Readers hand out frame ranges `read(start, stop)`
with non-decreasing starts, so a video is decoded once, holding only the frames still needed.
"""

from __future__ import annotations

import collections
import fractions
import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from vrt_jax import metrics

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v")
DEFAULT_FPS = fractions.Fraction(25)


def is_video_path(path: str | os.PathLike) -> bool:
  return Path(path).suffix.lower() in VIDEO_EXTENSIONS


def list_frames(folder: str | os.PathLike) -> list[Path]:
  """Image files of a frame folder, sorted by name (hidden files skipped)."""
  folder = Path(folder)
  if not folder.is_dir():
    raise ValueError(f"frame folder {folder} does not exist or is not a directory")
  frames = sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".")
                  and p.suffix.lower() in IMAGE_EXTENSIONS)
  if not frames:
    raise ValueError(
        f"no image frames ({', '.join(IMAGE_EXTENSIONS)}) in {folder}; expected a folder of "
        "frames such as 00000000.png, 00000001.png, ...")
  return frames


def read_image(path: str | os.PathLike) -> np.ndarray:
  """An image file as (H, W, 3) RGB float32 in [0, 1] (grey is replicated, alpha dropped)."""
  try:
    with Image.open(path) as img:
      rgb = img.convert("RGB")
  except (UnidentifiedImageError, OSError) as e:
    raise ValueError(f"cannot read image {path}: {e}") from e
  return np.asarray(rgb, dtype=np.float32) / np.float32(255.0)


def read_images(paths: list[Path]) -> np.ndarray:
  """Images of one size as (T, H, W, 3) float32; a frame of another size is an error."""
  frames = []
  for p in paths:
    frame = read_image(p)
    if frames and frame.shape != frames[0].shape:
      raise ValueError(
          f"frame {p} has size {frame.shape[:2]}, but {paths[0]} has {frames[0].shape[:2]}; "
          "all frames of a clip must have the same size")
    frames.append(frame)
  return np.stack(frames)


def write_image(path: str | os.PathLike, frame: np.ndarray) -> None:
  """Writes a (H, W, 3) [0, 1] float frame as 8-bit (rounded as the metrics quantise)."""
  Image.fromarray(metrics.to_uint8(frame)).save(path)


class FrameFolderReader:
  """A folder of frames as a clip; all frames must share the first frame's size."""

  def __init__(self, folder: str | os.PathLike):
    self.paths = list_frames(folder)
    first = read_image(self.paths[0])
    self.num_frames = len(self.paths)
    self.height, self.width = first.shape[:2]
    self.fps = DEFAULT_FPS

  def read(self, start: int, stop: int) -> np.ndarray:
    frames = read_images(self.paths[start:stop])
    if frames.shape[1:3] != (self.height, self.width):
      raise ValueError(
          f"frames {self.paths[start]}.. have size {frames.shape[1:3]}, but "
          f"{self.paths[0]} has {(self.height, self.width)}")
    return frames

  def close(self) -> None:
    pass


class VideoFileReader:
  """Decodes a video file forward; keeps only the frames a later `read` may still ask for."""

  def __init__(self, path: str | os.PathLike):
    import av  # Imported lazily: only video files need PyAV.

    self.path = Path(path)
    if not self.path.is_file():
      raise ValueError(f"video file {self.path} does not exist")
    try:
      self._container = av.open(str(self.path))
    except (av.error.FFmpegError, OSError) as e:
      raise ValueError(f"{self.path} is not a readable video file: {e}") from e
    if not self._container.streams.video:
      self._container.close()
      raise ValueError(f"{self.path} has no video stream")
    stream = self._container.streams.video[0]
    self.fps = stream.average_rate or stream.guessed_rate or DEFAULT_FPS
    self.num_frames = self._count_frames(str(self.path))
    if self.num_frames == 0:
      self._container.close()
      raise ValueError(f"{self.path} has no decodable video frames")
    self.height, self.width = stream.height, stream.width
    self._frames = self._container.decode(stream)
    self._buffer: collections.deque[np.ndarray] = collections.deque()
    self._buffer_start = 0

  @staticmethod
  def _count_frames(path: str) -> int:
    """Counts frames by demuxing (no decoding): container frame counts may be missing."""
    import av

    try:
      with av.open(path) as container:
        stream = container.streams.video[0]
        return sum(1 for packet in container.demux(stream) if packet.size)
    except av.error.FFmpegError as e:
      raise ValueError(f"{path} is not a readable video file: {e}") from e

  def read(self, start: int, stop: int) -> np.ndarray:
    if start < self._buffer_start:
      raise ValueError(f"video frames are read forward; frame {start} was already dropped")
    stop = min(stop, self.num_frames)
    while self._buffer_start < start and self._buffer:
      self._buffer.popleft()
      self._buffer_start += 1
    import av

    while self._buffer_start + len(self._buffer) < stop:
      try:
        frame = next(self._frames, None)
      except (av.error.FFmpegError, OSError) as e:
        raise ValueError(f"{self.path}: cannot decode frame "
                         f"{self._buffer_start + len(self._buffer)}: {e}") from e
      if frame is None:
        raise ValueError(f"{self.path} ended after {self._buffer_start + len(self._buffer)} "
                         f"frames, expected {self.num_frames}")
      rgb = frame.to_ndarray(format="rgb24").astype(np.float32) / np.float32(255.0)
      if rgb.shape[:2] != (self.height, self.width):
        raise ValueError(
            f"{self.path}: frame {self._buffer_start + len(self._buffer)} is "
            f"{rgb.shape[1]}x{rgb.shape[0]}, but the video is {self.width}x{self.height}; "
            "videos that change size are not supported (re-encode at one size)")
      if self._buffer_start + len(self._buffer) < start:
        self._buffer_start += 1  # Skipped frame: decoded but not needed.
        continue
      self._buffer.append(rgb)
    return np.stack(list(self._buffer)[start - self._buffer_start:stop - self._buffer_start])

  def close(self) -> None:
    self._container.close()


def open_video(path: str | os.PathLike) -> FrameFolderReader | VideoFileReader:
  """A reader for a frame folder or a video file."""
  if Path(path).is_dir():
    return FrameFolderReader(path)
  if is_video_path(path):
    return VideoFileReader(path)
  raise ValueError(
      f"input {path} must be a frame folder or a video file ({', '.join(VIDEO_EXTENSIONS)})")


def probe_writable(folder: str | os.PathLike, what: str = "output folder") -> Path:
  """Creates `folder` and writes, syncs and deletes a small file in it, before any long work.

  Raises OSError naming the folder if it cannot be created or written (read-only file system,
  no permission, a file in the way, disk full).
  """
  folder = Path(folder)
  probe = folder / f".write_probe_{os.getpid()}"
  try:
    folder.mkdir(parents=True, exist_ok=True)
    with open(probe, "wb") as f:
      f.write(b"\0" * 4096)
      f.flush()
      os.fsync(f.fileno())
    probe.unlink()
  except OSError as e:
    raise OSError(e.errno, f"{what} {folder} is not writable: {e.strerror or e}") from e
  return folder


class FrameFolderWriter:
  """Writes frame t as `<folder>/<t:08d>.png`; `exists(t)` supports resuming.

  Each frame is written to a hidden temporary file and renamed, so an interrupted or failed run
  leaves only complete frames under their final names.
  """

  def __init__(self, folder: str | os.PathLike):
    self.folder = probe_writable(folder)

  def path(self, t: int) -> Path:
    return self.folder / f"{t:08d}.png"

  def exists(self, t: int) -> bool:
    return self.path(t).is_file()

  def write(self, t: int, frame: np.ndarray) -> None:
    tmp = self.folder / f".{t:08d}.tmp.png"
    try:
      write_image(tmp, frame)
      os.replace(tmp, self.path(t))
    except OSError as e:
      tmp.unlink(missing_ok=True)
      raise OSError(e.errno, f"cannot write output frame {self.path(t)} ({e.strerror or e}); "
                             f"frames written before it are complete and a rerun resumes "
                             f"there") from e

  def close(self) -> None:
    pass

  def abort(self) -> None:
    """After a failure: frames already written stay (complete, and reused when resuming)."""


class VideoFileWriter:
  """Encodes frames in order to a video file (H.264, CRF 17), at the given frame rate.

  The video is encoded to a hidden temporary file beside `path` and renamed by `close()`; after a
  failure `abort()` deletes it, so `path` only ever holds a complete video.
  """

  def __init__(self, path: str | os.PathLike, fps: fractions.Fraction | float, width: int,
               height: int):
    import av

    self.path = Path(path)
    probe_writable(self.path.parent, "output video folder")
    self._tmp = self.path.with_name(f".{self.path.stem}.partial{self.path.suffix}")
    self._container = av.open(str(self._tmp), "w")
    rate = fractions.Fraction(fps).limit_denominator(1001 * 1000)
    self._stream = self._container.add_stream("libx264", rate=rate)
    self._stream.width, self._stream.height = width, height
    # 4:2:0 needs even sizes; odd-sized outputs keep full chroma instead of being cropped.
    self._stream.pix_fmt = "yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p"
    self._stream.options = {"crf": "17"}
    self._next = 0

  def exists(self, t: int) -> bool:
    return False

  def write(self, t: int, frame: np.ndarray) -> None:
    import av

    if t != self._next:
      raise ValueError(f"video frames must be written in order; got {t}, expected {self._next}")
    video_frame = av.VideoFrame.from_ndarray(metrics.to_uint8(frame), format="rgb24")
    for packet in self._stream.encode(video_frame):
      self._container.mux(packet)
    self._next += 1

  def close(self) -> None:
    for packet in self._stream.encode():
      self._container.mux(packet)
    self._container.close()
    os.replace(self._tmp, self.path)

  def abort(self) -> None:
    """Drops the unfinished video (a video file cannot be resumed)."""
    try:
      self._container.close()
    finally:
      self._tmp.unlink(missing_ok=True)


def write_video(path: str | os.PathLike, frames: np.ndarray,
                fps: fractions.Fraction | float = DEFAULT_FPS) -> None:
  """Writes (T, H, W, 3) [0, 1] frames to a video file or, for a non-video path, a frame folder."""
  frames = np.asarray(frames)
  if frames.ndim != 4 or frames.shape[-1] != 3:
    raise ValueError(f"frames must be (T, H, W, 3); got shape {frames.shape}")
  if is_video_path(path):
    writer = VideoFileWriter(path, fps, frames.shape[2], frames.shape[1])
  else:
    writer = FrameFolderWriter(path)
  try:
    for t, frame in enumerate(frames):
      writer.write(t, frame)
  except BaseException:
    writer.abort()
    raise
  writer.close()
