"""Frame and video IO: frame folders (PNG/JPEG, sorted by name) and video files via PyAV.

Frames are (H, W, 3) RGB float32 in [0, 1]. Readers hand out frame ranges `read(start, stop)`
with non-decreasing starts, so a video is decoded once, holding only the frames still needed.

Faithful video: a video is decoded to RGB with the matrix and range its stream is tagged with
(untagged: BT.709 for HD, BT.601 for SD, as players assume), at 16 bits per channel when the
source has more than 8, and a written video is encoded with the same matrix and tagged with the
same colour description (primaries, transfer, matrix, range), so players show the colours the
frames have. The input's audio streams are copied into a video output packet by packet (no
re-encoding). Frame folders are written as 8-bit or 16-bit PNGs; 16-bit PNGs are read at full
precision. A writer is fully set up (codec opened, container header written) when constructed,
so an output the encoder or container cannot handle fails before any frame is restored.
"""

from __future__ import annotations

import collections
import dataclasses
import fractions
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from vrt_jax import metrics

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v")
DEFAULT_FPS = fractions.Fraction(25)
BIT_DEPTHS = (8, 16)  # Of PNG output frames.

# Default encoder per container; any other encoder PyAV has can be named with `codec`.
_DEFAULT_CODECS = {".webm": "libvpx-vp9"}
_DEFAULT_CODEC = "libx264"
# CRF when none is given: 17 is near-transparent for x264. libvpx-vp9 without a CRF encodes at a
# fixed 256 kb/s, so it gets Google's recommended constant quality for HD (CRF 31, bitrate 0).
# Other encoders keep their own default.
_DEFAULT_CRF = {"libx264": 17, "libvpx-vp9": 31}

# AVColorPrimaries / AVColorTransferCharacteristic / AVColorSpace / AVColorRange codes (FFmpeg's
# pixfmt.h, also ISO/IEC 23091-2); 2 = unspecified for the first three, 0 for the range.
_UNSPECIFIED = 2
_RANGE_LIMITED, _RANGE_FULL = 1, 2
_BT709, _BT470BG, _SMPTE170M = 1, 5, 6
_MATRIX_RGB = 0
_NAMES = {1: "BT.709", 4: "FCC", 5: "BT.601 (625 lines)", 6: "BT.601 (525 lines)",
          7: "SMPTE 240M", 9: "BT.2020", 10: "BT.2020 (constant luminance)"}


@dataclasses.dataclass(frozen=True)
class ColorInfo:
  """How a video's samples map to colours: the codes of its VUI / `colr` tags.

  primaries, transfer, matrix: AVColorPrimaries / AVColorTransferCharacteristic / AVColorSpace
  codes (1 = BT.709; matrix 5 or 6 = BT.601); full_range: full (0-255) rather than limited
  (16-235) samples; tagged: whether the source said so (False: defaults by frame size).
  """

  primaries: int
  transfer: int
  matrix: int
  full_range: bool = False
  tagged: bool = True

  def describe(self) -> str:
    name = _NAMES.get(self.matrix, f"matrix {self.matrix}")
    if self.matrix == _MATRIX_RGB:
      name = "RGB"
    return (f"{name}, {'full' if self.full_range else 'limited'} range"
            + ("" if self.tagged else " (untagged source: assumed)"))


def is_hd(width: int, height: int) -> bool:
  """Whether players treat a frame size as HD (BT.709) rather than SD (BT.601)."""
  return width >= 1280 or height > 576


def default_color(width: int, height: int) -> ColorInfo:
  """The colour description players assume for an untagged video: BT.709 for HD; BT.601 for SD
  (625-line primaries for 576/288-line video, 525-line ones otherwise)."""
  if is_hd(width, height):
    return ColorInfo(_BT709, _BT709, _BT709, tagged=False)
  pal = height in (576, 288)
  return ColorInfo(_BT470BG if pal else _SMPTE170M, _SMPTE170M,
                   _BT470BG if pal else _SMPTE170M, tagged=False)


def stream_color(stream: Any) -> ColorInfo:
  """A video stream's colour description; each field it leaves unspecified is the default for
  its frame size (`default_color`); the range defaults to limited, full for yuvj formats."""
  ctx = stream.codec_context
  default = default_color(ctx.width, ctx.height)
  fmt = ctx.format
  tags = (ctx.color_primaries, ctx.color_trc, ctx.colorspace)
  primaries, transfer, matrix = (
      tag if tag not in (_UNSPECIFIED, 3) else fallback  # 3: reserved
      for tag, fallback in zip(tags, (default.primaries, default.transfer, default.matrix),
                               strict=True))
  if fmt is not None and fmt.is_rgb:
    matrix = _MATRIX_RGB
  if ctx.color_range in (_RANGE_LIMITED, _RANGE_FULL):
    full = ctx.color_range == _RANGE_FULL
  else:
    full = fmt is not None and (fmt.name.startswith("yuvj") or fmt.is_rgb)
  tagged = any(t not in (_UNSPECIFIED, 3) for t in tags)
  return ColorInfo(primaries, transfer, matrix, full, tagged)


def _sws_matrix(color: ColorInfo, width: int, height: int) -> Any:
  """The swscale colorspace (conversion matrix) for a colour description."""
  from av.video.reformatter import Colorspace

  table = {1: Colorspace.ITU709, 4: Colorspace.FCC, 5: Colorspace.ITU601,
           6: Colorspace.ITU601, 7: Colorspace.SMPTE240M, 9: Colorspace.BT2020,
           10: Colorspace.BT2020}
  if color.matrix in table:
    return table[color.matrix]
  return table[default_color(width, height).matrix]


def _sws_range(color: ColorInfo) -> Any:
  from av.video.reformatter import ColorRange

  return ColorRange.JPEG if color.full_range else ColorRange.MPEG


def _interpolation() -> Any:
  # Plain bilinear: with ACCURATE_RND this swscale upsamples chroma differently and the colours
  # of flat 16x16 blocks decode up to 15 levels off (3 without).
  from av.video.reformatter import Interpolation

  return Interpolation.BILINEAR


def format_bit_depth(pix_fmt: str) -> int:
  """Bits per sample of a pixel format (8 for yuv420p, 10 for yuv420p10le, ...)."""
  import av

  return max(c.bits for c in av.VideoFormat(pix_fmt).components)


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


def png_bit_depth(path: str | os.PathLike) -> int:
  """Bits per sample of a PNG file (from its header), 8 for any other image."""
  with open(path, "rb") as f:
    head = f.read(25)
  if len(head) == 25 and head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
    return max(8, head[24])
  return 8


def read_image(path: str | os.PathLike) -> np.ndarray:
  """An image file as (H, W, 3) RGB float32 in [0, 1] (grey is replicated, alpha dropped).

  16-bit PNGs keep their 16 bits (Pillow would cut them to 8).
  """
  if png_bit_depth(path) == 16:
    return _read_png16(path)
  try:
    with Image.open(path) as img:
      rgb = img.convert("RGB")
  except (UnidentifiedImageError, OSError) as e:
    raise ValueError(f"cannot read image {path}: {e}") from e
  return np.asarray(rgb, dtype=np.float32) / np.float32(255.0)


def _read_png16(path: str | os.PathLike) -> np.ndarray:
  import av

  try:
    with av.open(str(path)) as container:
      frame = next(container.decode(video=0))
      rgb = frame.to_ndarray(format="rgb48le")
  except (av.error.FFmpegError, OSError, StopIteration) as e:
    raise ValueError(f"cannot read image {path}: {e}") from e
  return rgb.astype(np.float32) / np.float32(65535.0)


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


def to_uint16(img01: np.ndarray) -> np.ndarray:
  """[0, 1] float image -> uint16 in [0, 65535] (clamped, rounded), as `metrics.to_uint8`."""
  x = np.asarray(img01)
  if not np.isfinite(x).all():
    raise ValueError("to_uint16 got NaN or Inf values")
  return (np.clip(x.astype(np.float32), 0.0, 1.0) * np.float32(65535.0)).round().astype(np.uint16)


def write_image(path: str | os.PathLike, frame: np.ndarray, bit_depth: int = 8) -> None:
  """Writes a (H, W, 3) [0, 1] float frame as an 8-bit image or a 16-bit PNG (rounded as the
  metrics quantise)."""
  if bit_depth == 8:
    Image.fromarray(metrics.to_uint8(frame)).save(path)
    return
  if bit_depth != 16:
    raise ValueError(f"bit depth must be one of {BIT_DEPTHS}; got {bit_depth}")
  import av

  # Pillow cannot write 16-bit RGB; FFmpeg's PNG encoder can (the packet is the whole file).
  ctx = av.CodecContext.create("png", "w")
  ctx.width, ctx.height, ctx.pix_fmt = frame.shape[1], frame.shape[0], "rgb48be"
  image = av.VideoFrame.from_ndarray(to_uint16(frame), format="rgb48le").reformat(
      format="rgb48be")
  data = b"".join(bytes(p) for p in [*ctx.encode(image), *ctx.encode(None)])
  with open(path, "wb") as f:
    f.write(data)


class FrameFolderReader:
  """A folder of frames as a clip; all frames must share the first frame's size.

  bit_depth: 16 if the first frame is a 16-bit PNG, else 8. color: None (frames are RGB).
  """

  def __init__(self, folder: str | os.PathLike):
    self.paths = list_frames(folder)
    first = read_image(self.paths[0])
    self.num_frames = len(self.paths)
    self.height, self.width = first.shape[:2]
    self.fps = DEFAULT_FPS
    self.bit_depth = png_bit_depth(self.paths[0])
    self.color: ColorInfo | None = None
    self.path = Path(folder)
    self.has_audio = False

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
  """Decodes a video file forward; keeps only the frames a later `read` may still ask for.

  Frames are converted to RGB with the stream's matrix and range (`color`, see `stream_color`),
  through 16-bit RGB (no 8-bit rounding; `bit_depth` is the stream's bits per sample).
  """

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
    fmt = stream.codec_context.format
    self.bit_depth = format_bit_depth(fmt.name) if fmt is not None else 8
    self.color = stream_color(stream)
    self.has_audio = bool(self._container.streams.audio)
    self._convert = dict(format="rgb48le", interpolation=_interpolation())
    if self.color.matrix != _MATRIX_RGB:
      self._convert.update(src_colorspace=_sws_matrix(self.color, self.width, self.height),
                           src_color_range=_sws_range(self.color))
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
      if (frame.height, frame.width) != (self.height, self.width):
        raise ValueError(
            f"{self.path}: frame {self._buffer_start + len(self._buffer)} is "
            f"{frame.width}x{frame.height}, but the video is {self.width}x{self.height}; "
            "videos that change size are not supported (re-encode at one size)")
      if self._buffer_start + len(self._buffer) < start:
        self._buffer_start += 1  # Skipped frame: decoded but not needed.
        continue
      if self.color.matrix != _MATRIX_RGB:
        # Via 16-bit 4:4:4: swscale's direct 8-bit YUV -> RGB path is biased (colours come out
        # ~1.5 levels dark, pure primaries up to 5), the 16-bit one is not.
        frame = frame.reformat(format="yuv444p16le", interpolation=_interpolation())
      rgb = frame.to_ndarray(**self._convert).astype(np.float32) / np.float32(65535.0)
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


def first_missing(path: str | os.PathLike) -> Path | None:
  """The outermost of `path` and its parents that does not exist yet (None if it exists): what
  to remove after a failed run that created it."""
  path = Path(path).absolute()
  if path.exists():
    return None
  while not path.parent.exists():
    path = path.parent
  return path


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
  """Writes frame t as `<folder>/<t:08d>.png` (8 or 16 bits); `exists(t)` supports resuming.

  Each frame is written to a hidden temporary file and renamed, so an interrupted or failed run
  leaves only complete frames under their final names.
  """

  def __init__(self, folder: str | os.PathLike, bit_depth: int = 8):
    if bit_depth not in BIT_DEPTHS:
      raise ValueError(f"PNG bit depth must be one of {BIT_DEPTHS}; got {bit_depth}")
    self.folder = probe_writable(folder)
    self.bit_depth = bit_depth
    self.description = f"{bit_depth}-bit PNG frames"

  def path(self, t: int) -> Path:
    return self.folder / f"{t:08d}.png"

  def exists(self, t: int) -> bool:
    return self.path(t).is_file()

  def write(self, t: int, frame: np.ndarray) -> None:
    tmp = self.folder / f".{t:08d}.tmp.png"
    try:
      if self.bit_depth == 8:
        write_image(tmp, frame)
      else:
        write_image(tmp, frame, bit_depth=self.bit_depth)
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


def _encoders() -> list[str]:
  """Names of the video encoders this PyAV build has."""
  import av

  names = []
  for name in sorted(av.codecs_available):
    try:
      codec = av.Codec(name, "w")
    except Exception:  # noqa: BLE001 - a decoder only, or unusable: not an encoder here.
      continue
    if codec.type == "video":
      names.append(name)
  return names


def default_codec(path: str | os.PathLike) -> str:
  return _DEFAULT_CODECS.get(Path(path).suffix.lower(), _DEFAULT_CODEC)


def default_pix_fmt(codec_formats: list[str], bit_depth: int, width: int, height: int) -> str:
  """4:2:0 (4:4:4 for odd sizes, which 4:2:0 cannot hold), 10-bit when the source has more than
  8 bits and the encoder can, else 8-bit; the encoder's first format if it has none of these
  (an encoder that lists no formats gets the 8-bit one)."""
  family = "yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p"
  candidates = ([f"{family}10le"] if bit_depth > 8 else []) + [family]
  for fmt in candidates:
    if fmt in codec_formats:
      return fmt
  return codec_formats[0] if codec_formats else family


class VideoFileWriter:
  """Encodes frames in order to a video file, at the given frame rate.

  codec: an FFmpeg encoder name (default libx264; libvpx-vp9 for .webm); crf: its constant
  quality (default 17 for libx264, 31 for libvpx-vp9, else the encoder's own); pix_fmt: the
  encoded pixel format (default `default_pix_fmt`: 10-bit if `source_bit_depth` > 8); color:
  the colour description to encode with and tag (default `default_color` of the output size);
  audio_from: a video file whose audio streams are copied (remuxed, not re-encoded), aligned to
  its first video frame.

  Everything is set up here (encoder opened, container header written), so an unknown codec, a
  pixel format the encoder lacks, or a codec the container cannot hold raises ValueError before
  the first frame. The video is encoded to a hidden temporary file beside `path` and renamed by
  `close()`; after a failure `abort()` deletes it, so `path` only ever holds a complete video.
  """

  def __init__(self, path: str | os.PathLike, fps: fractions.Fraction | float, width: int,
               height: int, *, codec: str | None = None, crf: float | None = None,
               pix_fmt: str | None = None, color: ColorInfo | None = None,
               source_bit_depth: int = 8, audio_from: str | os.PathLike | None = None):
    import av

    self.path = Path(path)
    if not is_video_path(self.path):
      raise ValueError(f"{self.path} is not a video file name ({', '.join(VIDEO_EXTENSIONS)})")
    codec = codec or default_codec(self.path)
    try:
      encoder = av.Codec(codec, "w")
    except Exception as e:  # noqa: BLE001 - PyAV raises several kinds for an unknown name.
      raise ValueError(f"no video encoder {codec!r} in this FFmpeg build; available: "
                       f"{', '.join(_encoders())}") from e
    if encoder.type != "video":
      raise ValueError(f"{codec!r} is an {encoder.type} encoder, not a video one")
    formats = [f.name for f in encoder.video_formats or []]
    if pix_fmt is None:
      pix_fmt = default_pix_fmt(formats, source_bit_depth, width, height)
    elif formats and pix_fmt not in formats:
      raise ValueError(f"encoder {codec} cannot encode pixel format {pix_fmt!r}; it takes "
                       f"{', '.join(formats)}")
    try:
      fmt = av.VideoFormat(pix_fmt)
    except (ValueError, TypeError) as e:
      raise ValueError(f"unknown pixel format {pix_fmt!r} ({e})") from e
    if ((width % 2 and fmt.chroma_width(width) != width)
        or (height % 2 and fmt.chroma_height(height) != height)):
      raise ValueError(f"pixel format {pix_fmt} subsamples chroma, so the frame size must be "
                       f"even; the output is {width}x{height} (use a 4:4:4 format such as "
                       f"{pix_fmt.replace('420', '444').replace('422', '444')})")
    options = {}
    has_crf = any(o.name == "crf" for o in
                  av.CodecContext.create(codec, "w").supported_options.private)
    if crf is not None and not has_crf:
      raise ValueError(f"encoder {codec} has no constant-quality (CRF) setting; drop --crf")
    crf = crf if crf is not None else _DEFAULT_CRF.get(codec)
    if crf is not None:
      if crf < 0:
        raise ValueError(f"CRF must be >= 0; got {crf}")
      options["crf"] = f"{crf:g}"
      if codec.startswith("libvpx"):
        options["b:v"] = "0"  # Constant quality rather than a bitrate cap.
    self.color = color or default_color(width, height)
    if fmt.is_rgb:
      self.color = dataclasses.replace(self.color, matrix=_MATRIX_RGB, full_range=True)
    self.bit_depth = format_bit_depth(pix_fmt)
    self.codec, self.pix_fmt, self.crf = codec, pix_fmt, crf
    probe_writable(self.path.parent, "output video folder")
    self._tmp = self.path.with_name(f".{self.path.stem}.partial{self.path.suffix}")
    self._container = None
    self._audio_in = None
    self._audio_packets: Iterator[Any] | None = None
    self._pending: Any = None
    try:
      self._container = av.open(str(self._tmp), "w")
      rate = fractions.Fraction(fps).limit_denominator(1001 * 1000)
      try:
        self._stream = self._container.add_stream(codec, rate=rate)
      except ValueError as e:
        raise ValueError(f"{self.path.suffix} files cannot hold {codec} video ({e}); use another "
                         f"container (.mkv holds most codecs) or --codec") from e
      self._stream.width, self._stream.height = width, height
      self._stream.pix_fmt = pix_fmt
      self._stream.options = options
      ctx = self._stream.codec_context
      ctx.color_primaries, ctx.color_trc = self.color.primaries, self.color.transfer
      ctx.colorspace = self.color.matrix
      ctx.color_range = _RANGE_FULL if self.color.full_range else _RANGE_LIMITED
      self._audio: list[tuple[Any, Any]] = []
      if audio_from is not None:
        self._open_audio(Path(audio_from))
      try:
        self._container.start_encoding()  # Opens the encoder and writes the header now.
      except (av.error.FFmpegError, ValueError) as e:
        raise ValueError(f"cannot write {self.path.name} as {codec} {pix_fmt}"
                         f"{' with the input audio' if self._audio else ''}: {e}") from e
    except BaseException:
      self.abort()
      raise
    self._reformat = dict(format=pix_fmt, interpolation=_interpolation())
    if not fmt.is_rgb:
      self._reformat.update(dst_colorspace=_sws_matrix(self.color, width, height),
                            dst_color_range=_sws_range(self.color))
    self._fps = fractions.Fraction(rate)
    self._next = 0
    audio_codecs = ", ".join(out.codec_context.name for out, _ in self._audio)
    self.description = (f"{codec} {pix_fmt}" + (f" CRF {crf:g}" if crf is not None else "")
                        + f", {self.color.describe()}"
                        + (f", audio copied ({audio_codecs})" if self._audio else ""))

  def _open_audio(self, source: Path) -> None:
    """Adds a copy of each audio stream of `source` (same codec and parameters)."""
    import av

    self._audio_in = av.open(str(source))
    in_streams = list(self._audio_in.streams.audio)
    video_in = self._audio_in.streams.video
    # Audio keeps its offset to the first video frame, which the output puts at time 0.
    self._audio_shift = 0.0
    if video_in and video_in[0].start_time is not None:
      self._audio_shift = float(video_in[0].start_time * video_in[0].time_base)
    for stream in in_streams:
      try:
        out = self._container.add_stream_from_template(stream)
      except ValueError as e:
        raise ValueError(
            f"{self.path.suffix} files cannot hold the input's {stream.codec_context.name} "
            f"audio ({e}); write another container (.mkv holds most codecs) or drop the audio "
            "(--no_audio)") from e
      self._audio.append((out, stream))
    self._audio_packets = self._audio_in.demux(*in_streams) if in_streams else None

  def _mux_audio(self, until: float | None) -> None:
    """Copies the input's audio packets that start before `until` seconds (None: all)."""
    if self._audio_packets is None:
      return
    outputs = {src.index: out for out, src in self._audio}
    while True:
      packet = self._pending or next(self._audio_packets, None)
      self._pending = None
      if packet is None:
        self._audio_packets = None
        return
      if packet.size == 0 or packet.pts is None:
        continue
      shift = round(self._audio_shift / packet.time_base)
      if until is not None and float((packet.pts - shift) * packet.time_base) >= until:
        self._pending = packet
        return
      packet.pts -= shift
      if packet.dts is not None:
        packet.dts -= shift
      packet.stream = outputs[packet.stream.index]
      self._container.mux(packet)

  def exists(self, t: int) -> bool:
    return False

  def write(self, t: int, frame: np.ndarray) -> None:
    import av

    if t != self._next:
      raise ValueError(f"video frames must be written in order; got {t}, expected {self._next}")
    # From 16-bit RGB whatever the output depth: the encoder's quantisation is the only one.
    video_frame = av.VideoFrame.from_ndarray(to_uint16(frame), format="rgb48le")
    video_frame = video_frame.reformat(**self._reformat)
    video_frame.color_primaries = self.color.primaries
    video_frame.color_trc = self.color.transfer
    video_frame.pts = t
    video_frame.time_base = 1 / self._fps
    for packet in self._stream.encode(video_frame):
      self._container.mux(packet)
    self._next += 1
    self._mux_audio(until=(t + 1) / self._fps)

  def close(self) -> None:
    for packet in self._stream.encode():
      self._container.mux(packet)
    self._mux_audio(until=None)
    self._container.close()
    if self._audio_in is not None:
      self._audio_in.close()
    os.replace(self._tmp, self.path)

  def abort(self) -> None:
    """Drops the unfinished video (a video file cannot be resumed)."""
    try:
      if self._container is not None:
        self._container.close()
    except Exception:  # noqa: BLE001 - closing a half-set-up container may fail; drop it anyway.
      pass
    finally:
      if self._audio_in is not None:
        self._audio_in.close()
      self._tmp.unlink(missing_ok=True)


@dataclasses.dataclass(frozen=True)
class OutputOptions:
  """How to write a restored clip.

  codec, crf, pix_fmt: see `VideoFileWriter` (video outputs only); bit_depth: of PNG frames
  (default 16 when the input has more than 8 bits per sample, else 8); audio: copy the input
  video's audio into a video output.
  """

  codec: str | None = None
  crf: float | None = None
  pix_fmt: str | None = None
  bit_depth: int | None = None
  audio: bool = True


def open_writer(path: str | os.PathLike, reader: FrameFolderReader | VideoFileReader, *,
                fps: fractions.Fraction | float, scale: int = 1,
                options: OutputOptions | None = None) -> FrameFolderWriter | VideoFileWriter:
  """A writer for the restored frames of `reader`'s clip: a video file for a video path (the
  input's colour description, bit depth and, at the input's frame rate, audio), else a frame
  folder. Raises ValueError for options that do not fit the output, before any frame is made.
  """
  options = options or OutputOptions()
  width, height = reader.width * scale, reader.height * scale
  if not is_video_path(path):
    if options.codec or options.crf is not None or options.pix_fmt:
      raise ValueError(f"--codec, --crf and --pix_fmt are for video outputs; {path} is a frame "
                       "folder (use --bit_depth for its PNGs)")
    bits = options.bit_depth or (16 if reader.bit_depth > 8 else 8)
    return FrameFolderWriter(path, bit_depth=bits)
  if options.bit_depth is not None:
    raise ValueError(f"--bit_depth is for PNG frame folders; for the video {path} choose a "
                     "pixel format (--pix_fmt yuv420p10le for 10 bits)")
  # Audio only fits at the input's frame rate: another rate changes the video's duration.
  same_rate = fractions.Fraction(fps).limit_denominator(1001 * 1000) == fractions.Fraction(
      reader.fps).limit_denominator(1001 * 1000)
  audio = reader.path if options.audio and reader.has_audio and same_rate else None
  writer = VideoFileWriter(path, fps, width, height, codec=options.codec, crf=options.crf,
                           pix_fmt=options.pix_fmt, color=reader.color,
                           source_bit_depth=reader.bit_depth, audio_from=audio)
  if options.audio and reader.has_audio and not same_rate:
    writer.description += ", audio dropped (the frame rate differs from the input's)"
  return writer


def check_output(path: str | os.PathLike, options: OutputOptions | None = None,
                 input_path: str | os.PathLike | None = None) -> None:
  """Fails fast (ValueError) if `path` cannot be written with `options`: for a video, sets up
  an encoder and container as `VideoFileWriter` would (with the input's audio, if any) and
  drops it. Run before loading a model; frame-size checks follow once the input is open."""
  options = options or OutputOptions()
  if not is_video_path(path):
    if options.codec or options.crf is not None or options.pix_fmt:
      raise ValueError(f"--codec, --crf and --pix_fmt are for video outputs; {path} is a frame "
                       "folder (use --bit_depth for its PNGs)")
    return
  if options.bit_depth is not None:
    raise ValueError(f"--bit_depth is for PNG frame folders; for the video {path} choose a "
                     "pixel format (--pix_fmt yuv420p10le for 10 bits)")
  audio = None
  if options.audio and input_path is not None and is_video_path(input_path) and Path(
      input_path).is_file():
    import av

    try:
      with av.open(str(input_path)) as container:
        audio = input_path if container.streams.audio else None
    except (av.error.FFmpegError, OSError):
      audio = None  # The reader reports an unreadable input.
  probe = Path(path)
  probe = probe.with_name(f".{probe.stem}.probe{probe.suffix}")
  writer = VideoFileWriter(probe, DEFAULT_FPS, 64, 64, codec=options.codec, crf=options.crf,
                           pix_fmt=options.pix_fmt, audio_from=audio)
  writer.abort()


def write_video(path: str | os.PathLike, frames: np.ndarray,
                fps: fractions.Fraction | float = DEFAULT_FPS, **writer_options: Any) -> None:
  """Writes (T, H, W, 3) [0, 1] frames to a video file or, for a non-video path, a frame folder.

  writer_options: `VideoFileWriter`'s keywords for a video, `bit_depth` for a frame folder.
  """
  frames = np.asarray(frames)
  if frames.ndim != 4 or frames.shape[-1] != 3:
    raise ValueError(f"frames must be (T, H, W, 3); got shape {frames.shape}")
  if is_video_path(path):
    writer = VideoFileWriter(path, fps, frames.shape[2], frames.shape[1], **writer_options)
  else:
    writer = FrameFolderWriter(path, **writer_options)
  try:
    for t, frame in enumerate(frames):
      writer.write(t, frame)
  except BaseException:
    writer.abort()
    raise
  writer.close()
