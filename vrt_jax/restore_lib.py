"""Restoring a user's video, streaming: weights to a model, tiling to a memory budget, resuming.

`restore_video(load_restorer(...), INPUT, OUTPUT)` is what `vrt-restore` (vrt_jax.restore, the
command line) and `vrt_jax.load` (vrt_jax.api) run.

INPUT and OUTPUT are frame folders or video files (.mp4, ...); a video output keeps the input's
frame rate, colour description (BT.709 / BT.601 tags) and audio, and a >8-bit input gives 10-bit
video or 16-bit PNGs (see vrt_jax.video). The clip is read, restored and written one temporal tile
at a time, so memory does not grow with the number of frames. Writing to a frame folder resumes:
temporal tiles whose output frames all exist are skipped (frames are written atomically, so an
interrupted run leaves only complete frames; a record in the cache, not in the folder, keeps the
input, model, weights and sigma, and a rerun that differs in any of them is refused instead of
mixing outputs). The output folder gets nothing but frames, and a run that fails before its first
frame leaves none. A video output is encoded to a hidden temporary file and only renamed to OUTPUT
when complete.

Tiling: given tile / overlap if any; otherwise the preset's official test tiling
(`presets.TEST_SETTINGS`), shrunk until `estimate_tile_bytes` fits the memory budget (see there).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from vrt_jax import inference, presets, video
from vrt_jax.cli import UserError

# Bytes of device memory per input voxel (one pixel of one frame) of a tile, from XLA's memory
# analysis of the jitted tiny VRT on CPU: 4.6-4.9 KB per voxel for tiles 6x64x64 (121 MB),
# 12x64x64 (233 MB), 6x128x128 (454 MB). Window attention dominates (an N x N matrix per head and
# window, N = prod(window_size), i.e. N * heads floats per voxel), then feature maps; the
# estimate below is 1.6x the measured tiny figure.
_ATTENTION_COPIES = 2
_FEATURE_COPIES = 16
_RECONSTRUCTION_FEATURES = 64 * 3  # num_feat 64 at the upsampled resolution, ~3 live maps.
_MIN_TILE_FRAMES = 2
_DEFAULT_TILE = (12, 256, 256)  # Without a preset: the deblurring models' official tiling.


def estimate_tile_bytes(model_kwargs: dict[str, Any], tile: Sequence[int]) -> int:
  """Upper estimate of device memory for one (T, H, W) tile of a VRT forward pass, in bytes.

  Rule: 4 bytes x T x H x W x (2 x prod(window) x max(num_heads) + 16 x max(embed_dims)
  + 192 x upscale^2 if upscale > 1) + 4 bytes x parameters.
  """
  t, h, w = (int(v) for v in tile)
  model_kwargs = with_model_defaults(model_kwargs)
  window = model_kwargs["window_size"]
  heads = max(model_kwargs["num_heads"])
  embed = max(model_kwargs["embed_dims"])
  scale = int(model_kwargs["upscale"])
  per_voxel = (_ATTENTION_COPIES * math.prod(window) * heads + _FEATURE_COPIES * embed
               + (_RECONSTRUCTION_FEATURES * scale * scale if scale > 1 else 0))
  params = _approx_param_count(model_kwargs)
  return 4 * (t * h * w * per_voxel + params)


def with_model_defaults(model_kwargs: dict[str, Any]) -> dict[str, Any]:
  """`model_kwargs` completed with the VRT constructor's defaults (the one place they live)."""
  import vrt_jax

  defaults = {f.name: f.default for f in dataclasses.fields(vrt_jax.VRT)
              if f.default is not dataclasses.MISSING and f.name not in ("parent", "name")}
  return {**defaults, **model_kwargs}


def _approx_param_count(kw: dict[str, Any]) -> int:
  # Linear layers of the TMSA blocks dominate: ~ (4 + 3 * mlp_ratio) * dim^2 per block.
  kw = with_model_defaults(kw)
  dims, depths, mlp = kw["embed_dims"], kw["depths"], float(kw["mlp_ratio"])
  return int(sum((4 + 3 * mlp) * d * d * n for d, n in zip(dims, depths, strict=False)) * 1.5)


def choose_tiling(model_kwargs: dict[str, Any], num_frames: int, height: int, width: int, *,
                  budget_bytes: int | None, tile: Sequence[int] | None = None,
                  tile_overlap: Sequence[int] | None = None, preset: str | None = None
                  ) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
  """Tile and overlap for a clip: the official tiling, shrunk to fit the memory budget.

  Start from `tile` (or the preset's official tile, or (12, 256, 256)) clipped to the clip; while
  the estimate exceeds the budget, halve the spatial tile (down to 128, keeping multiples of 8),
  then drop frames (down to 2 more than the overlap), then halve space further (down to the
  model's minimum, 8 windows). Raises ValueError if even that does not fit.
  """
  import vrt_jax

  kwargs = with_model_defaults(model_kwargs)
  window = tuple(kwargs["window_size"])
  min_hw = max(vrt_jax.vrt.min_hw(window, kwargs["pa_frames"]))
  user_overlap = tile_overlap is not None
  if tile_overlap is None:
    tile_overlap = presets.TEST_SETTINGS[preset]["tile_overlap"] if preset else (2, 20, 20)
  if tile is None:
    # Never the whole clip by default: a long video would then be read into memory at once.
    tile = presets.TEST_SETTINGS[preset]["tile"] if preset else _DEFAULT_TILE
  # Effective sizes: 0 = whole dimension (padded to the window, at least the minimum).
  def whole(n: int, mult: int, minimum: int = 0) -> int:
    return max(n + (mult - n % mult) % mult, minimum)
  t = min(tile[0] or num_frames, num_frames)
  h = min(tile[1] or whole(height, window[1], min_hw), whole(height, window[1], min_hw))
  w = min(tile[2] or whole(width, window[2], min_hw), whole(width, window[2], min_hw))
  overlap = tuple(int(o) for o in tile_overlap)
  if budget_bytes is None:
    given = (int(tile[0]), int(tile[1]), int(tile[2]))
    return given, overlap if user_overlap else _fit_overlap(overlap, given)

  def fits() -> bool:
    return estimate_tile_bytes(model_kwargs, (t, h, w)) <= budget_bytes

  def halve(n: int, floor: int) -> int:
    return max(floor, (n // 2) // 8 * 8)

  while not fits() and max(h, w) > 128:
    h, w = (halve(h, 128) if h >= w else h), (halve(w, 128) if w >= h else w)
  floor_t = max(_MIN_TILE_FRAMES, overlap[0] + 2)
  while not fits() and t > floor_t:
    t -= 1
  while not fits() and max(h, w) > min_hw:
    h, w = (halve(h, min_hw) if h >= w else h), (halve(w, min_hw) if w >= h else w)
  if not fits():
    need = estimate_tile_bytes(model_kwargs, (t, h, w)) / 2**20
    raise ValueError(f"memory budget {budget_bytes / 2**20:.0f} MB is too small: the smallest "
                     f"tile ({t}, {h}, {w}) needs about {need:.0f} MB")
  # Spatial tiles that cover the frame are passed as 0 (the same single padded tile). A temporal
  # tile that covers the clip stays as given: the clip then runs at its own length, where 0 would
  # pad it to the window (the reference differs between the two).
  new_tile = (int(tile[0]) if t >= num_frames else t, 0 if h >= height else h,
              0 if w >= width else w)
  return new_tile, _fit_overlap(overlap, new_tile) if not user_overlap else tuple(
      o if n else 0 for o, n in zip(overlap, new_tile, strict=True))


def _fit_overlap(overlap: Sequence[int], tile: Sequence[int]) -> tuple[int, int, int]:
  """Default overlaps shrunk below small tiles (none for untiled dimensions)."""
  return tuple(min(o, n // 2) if n else 0 for o, n in zip(overlap, tile, strict=True))


def load_config(path: str) -> Any:
  """`get_config()` of a config file (configs/<task>.py)."""
  spec = importlib.util.spec_from_file_location("vrt_restore_config", path)
  if spec is None or spec.loader is None or not Path(path).is_file():
    raise ValueError(f"config file {path} does not exist")
  module = importlib.util.module_from_spec(spec)
  sys.path.insert(0, str(Path(path).resolve().parent.parent))  # `from configs import common`
  try:
    spec.loader.exec_module(module)
  finally:
    sys.path.pop(0)
  return module.get_config()


@dataclasses.dataclass
class Restorer:
  """A model with its weights and settings, ready for `restore_video`.

  defaults: settings the weights' source supplies when the caller gives none (a training
  workdir's denoiser: `sigma`, its validation noise level).
  """

  model: Any
  variables: Any
  model_kwargs: dict[str, Any]
  preset: str | None
  defaults: dict[str, Any] = dataclasses.field(default_factory=dict)
  source: str = ""


WORKDIR_CONFIG = "config.json"  # What train.py writes into its workdir.


def describe_weights_source(weights: str) -> str:
  """What `--weights` names: 'name', 'pth', 'export', 'workdir' (ValueError if none)."""
  from vrt_jax import checkpoint
  from vrt_jax import weights as weights_lib

  path = Path(weights).expanduser()
  if not path.exists():
    if weights in weights_lib.MODELS:
      return "name"
    raise UserError(
        f"--weights {weights}: no such file or folder, and not a released model name.\n"
        "Give a .pth (with --preset NAME unless it is named after its model), a converted "
        f"folder, a training workdir, or one of: {', '.join(sorted(weights_lib.MODELS))}")
  if path.is_file():
    return "pth"
  if (path / checkpoint.MODEL_CONFIG).is_file():
    return "export"
  if (path / WORKDIR_CONFIG).is_file() or (path / checkpoint.CHECKPOINT_DIR).is_dir():
    return "workdir"
  return "folder"


def load_restorer(*, preset: str | None, weights: str, config: str | None = None,
                  checkpoint_fallback: bool = False, progress: bool = True,
                  log: Any = print, dtype: str | None = None,
                  matmul_precision: str | None = None) -> Restorer:
  """The model and weights named by `weights`, with what its source says about them.

  weights: a released model name (downloaded, verified and converted once: vrt_jax.weights);
  an official `.pth` (its model from `preset`, `config` or a file name that is a released model
  name); a directory written by `python -m vrt_jax.convert` (its `model_config.json` names the
  model); or a training workdir (its `config.json` gives the model, the preset and, for a
  denoiser, the default noise level).
  config / preset: override the model the source names.
  checkpoint_fallback: for a training workdir whose latest checkpoint is unreadable, load the
  latest earlier one that is readable (with a warning) instead of failing.
  dtype: the compute dtype (presets.COMPUTE_DTYPES; parameters stay float32); default: the
  source's (a training workdir's own, else float32).
  matmul_precision: of float32 matmuls and convolutions on accelerators
  (presets.MATMUL_PRECISIONS); default: the source's (a training workdir's own, else "default").
  """
  if dtype is not None and dtype not in presets.COMPUTE_DTYPES:
    raise UserError(f"--dtype {dtype}: choose one of {', '.join(presets.COMPUTE_DTYPES)}")
  if matmul_precision is not None and matmul_precision not in presets.MATMUL_PRECISIONS:
    raise UserError(f"--matmul_precision {matmul_precision}: choose one of "
                    f"{', '.join(presets.MATMUL_PRECISIONS)}")
  import vrt_jax
  from vrt_jax import checkpoint
  from vrt_jax import weights as weights_lib

  kind = describe_weights_source(weights)
  defaults: dict[str, Any] = {}
  if kind == "name":
    preset = preset or (weights if weights in presets.PRESETS else None)
    kwargs_from_name = weights_lib.MODELS[weights].model_kwargs
    weights = str(weights_lib.fetch(weights, progress=progress, log=log))
    kind = "export"
  else:
    kwargs_from_name = None
  weights = str(Path(weights).expanduser())
  if config:
    cfg = load_config(config)
    kwargs = cfg.model.to_dict()
    preset = preset or cfg.get("preset")
  elif preset:
    kwargs = presets.get_preset(preset)
  elif kind == "export":
    record = checkpoint.read_model_config(weights)
    kwargs, preset = record["model"], record["preset"]
  elif kind == "workdir" and os.path.isfile(os.path.join(weights, WORKDIR_CONFIG)):
    with open(os.path.join(weights, WORKDIR_CONFIG)) as f:
      cfg = json.load(f)
    kwargs, preset = cfg["model"], cfg.get("preset")
    if kwargs.get("nonblind_denoising"):
      defaults["sigma"] = float(cfg.get("data", {}).get("val_sigma", 0)) or None
  elif kind == "pth" and Path(weights).stem in presets.PRESETS:
    preset = Path(weights).stem
    kwargs = presets.get_preset(preset)
  elif kwargs_from_name is not None:
    kwargs = kwargs_from_name
  else:
    raise UserError(
        f"{weights} does not say which model it holds: give --preset NAME (one of the released "
        "models) or --config FILE")
  if dtype is not None:
    kwargs = {**kwargs, "dtype": dtype}
  if matmul_precision is not None:
    kwargs = {**kwargs, "matmul_precision": matmul_precision}
  model = vrt_jax.VRT(**kwargs)
  if model.pa_frames == 0:
    raise UserError(
        "frame interpolation models (pa_frames 0) map 4 frames to 1 in-between frame; restoring "
        "a whole video with them is not supported here")
  params = checkpoint.load_params(weights, model, fallback=checkpoint_fallback)
  return Restorer(model, {"params": params}, kwargs, preset, defaults, weights)


def noise_level(restorer: Restorer, sigma: float | None) -> float:
  """The noise level (0-255 scale) a non-blind denoiser runs with; 0 for other models.

  `sigma` if given, else the source's default (a training workdir's validation noise level);
  raises ValueError for a denoiser with neither.
  """
  spec = inference.ModelSpec.from_model(restorer.model)
  if spec.in_channels != restorer.model.in_chans + 1:
    return 0.0
  sigma = sigma if sigma else restorer.defaults.get("sigma")
  if not sigma:
    raise UserError("this is a non-blind denoising model: give the input's noise level "
                        "(0-255 scale) with --sigma, e.g. --sigma 25")
  return float(sigma)


def check_input(reader: Any) -> None:
  """Before anything compiles: every frame of a frame folder has the first frame's size.

  Reads only the image headers.
  """
  from PIL import Image

  paths = getattr(reader, "paths", None)
  if not paths:
    return
  want = (reader.width, reader.height)
  for p in paths[1:]:
    try:
      with Image.open(p) as img:
        size = img.size
    except OSError as e:
      raise UserError(f"cannot read image {p}: {e}") from e
    if size != want:
      raise UserError(
          f"frame {p} has size {(size[1], size[0])}, but {paths[0]} has {(want[1], want[0])}; "
          "all frames of a clip must have the same size (resize them or split the folder)")


def restore_video(restorer: Restorer, input_path: str, output_path: str, *,
                  tile: Sequence[int] | None = None, tile_overlap: Sequence[int] | None = None,
                  memory_budget_mb: float | None = None, sigma: float | None = None,
                  fps: float | None = None, progress: bool = True,
                  output: video.OutputOptions | None = None, log: Any = None,
                  space: int = 1) -> dict[str, Any]:
  """Restores INPUT (frame folder / video) to OUTPUT (frame folder / video), streaming.

  Everything that can be checked is checked before the model runs: the input (readable, frames
  of one size), the noise level, the tiling and the output (writable, not holding frames of
  another restore; codec, pixel format and container). OUTPUT gets nothing but frames; a run
  that fails before writing a frame leaves no OUTPUT (nor any folder it created for it). A frame
  folder that got frames before a failure keeps them, and the same command resumes there.

  sigma: noise level (0-255 scale) of the input, for non-blind denoising models (default: the
  weights' source's, e.g. a training workdir's validation noise level).
  output: codec, CRF, pixel format, PNG bit depth, audio (`video.open_writer` picks the rest
  from the input: colour description, bit depth, audio streams).
  log: called with one line saying how the clip is tiled, before the model runs.
  space: devices that split each tile's rows (spatial parallelism, `sharding.space_mesh`); the
  memory budget is then per device, so tiles may be `space` times larger.
  Returns a summary: frames, written, skipped (already present), tile, tile_overlap, tiling (that
  line), sigma, fps, output (what was written: codec, pixel format, colours, audio, or the PNG
  bit depth), seconds (restoring, incl. compiling) and frames_per_second.
  """
  from vrt_jax import sharding

  spec = inference.ModelSpec.from_model(restorer.model)
  mesh = sharding.space_mesh(space) if space > 1 else None
  sigma = noise_level(restorer, sigma)
  nonblind = bool(sigma)
  if Path(input_path).resolve() == Path(output_path).resolve():
    raise UserError(f"the output {output_path} is the input; choose another output path")
  reader = video.open_video(input_path)
  created = None
  writer = None
  written = 0
  try:
    check_input(reader)
    # The budget is per device; split over `space` devices, a tile's activations are too.
    budget = None if memory_budget_mb is None else int(memory_budget_mb * 2**20) * space
    tile, tile_overlap = choose_tiling(
        restorer.model_kwargs, reader.num_frames, reader.height, reader.width,
        budget_bytes=budget, tile=tile, tile_overlap=tile_overlap, preset=restorer.preset)
    shape = (reader.num_frames, reader.height, reader.width)
    tiling = inference.describe_tiling(restorer.model, shape, tile, tile_overlap)
    note = inference.space_split_note(restorer.model, shape, tile, tile_overlap, space)
    if note:
      tiling += f"; warning: {note}"
    out_fps = fps or reader.fps
    s = spec.scale
    is_video = video.is_video_path(output_path)
    record = None
    if not is_video:
      if Path(output_path).exists() and not Path(output_path).is_dir():
        raise UserError(f"output {output_path} is a file; give a folder or a video file name "
                        f"({', '.join(video.VIDEO_EXTENSIONS)})")
      record = run_record(restorer, reader, input_path, sigma)
      check_resume_record(output_path, record, write=False)
    created = video.first_missing(Path(output_path) if not is_video else Path(output_path).parent)
    if log:
      log(f"{reader.num_frames} frames of {reader.width}x{reader.height} -> "
          f"{reader.width * s}x{reader.height * s}: {tiling}")
    # vrt_jax.video.open_writer validates the output options before any compile.
    writer = video.open_writer(output_path, reader, fps=out_fps, scale=s, options=output)
    if not is_video:
      if writer.bit_depth != 8:  # Resuming must not mix 8- and 16-bit frames.
        record["bit_depth"] = writer.bit_depth
      check_resume_record(output_path, record)
    skipped = sum(writer.exists(t) for t in range(reader.num_frames))

    def read(start: int, stop: int) -> np.ndarray:
      frames = reader.read(start, stop)
      if nonblind:
        frames = np.concatenate(
            [frames, np.full(frames.shape[:-1] + (1,), sigma / 255.0, np.float32)], axis=-1)
      return frames[None]

    started = time.perf_counter()
    for t, frame in inference.restore_stream(
        restorer.model, restorer.variables, read, reader.num_frames, tile=tile,
        tile_overlap=tile_overlap, frame_done=writer.exists, progress=progress,
        apply_fn=inference.make_apply_fn(restorer.model, mesh)):
      writer.write(t, frame[0])
      written += 1
    writer.close()
    seconds = time.perf_counter() - started
    if isinstance(writer, video.FrameFolderWriter):
      # Every frame must be on disk now (written by this run or a previous one).
      missing = [t for t in range(reader.num_frames) if not writer.exists(t)]
      if missing:
        raise RuntimeError(f"{len(missing)} output frames are missing after the restore "
                           f"(first {missing[0]}) in {output_path}")
  except BaseException:
    if writer is not None:
      writer.abort()  # A video is dropped; written frames of a folder stay for resuming.
    if created is not None and not _holds_frames(Path(output_path)):
      shutil.rmtree(created, ignore_errors=True)
      if not is_video:
        forget_resume_record(output_path)
    raise
  finally:
    reader.close()
  return dict(frames=reader.num_frames, written=written, skipped=skipped, space=space,
              tile=list(tile),
              tile_overlap=list(tile_overlap), tiling=tiling, sigma=sigma, fps=float(out_fps),
              output=writer.description, seconds=seconds,
              frames_per_second=written / seconds if seconds > 0 else 0.0)


def _holds_frames(path: Path) -> bool:
  if path.is_file():
    return True
  return path.is_dir() and any(
      p.suffix.lower() in video.IMAGE_EXTENSIONS and not p.name.startswith(".")
      for p in path.iterdir())


RECORDS_DIR = "restore-runs"


def resume_record_path(folder: str | os.PathLike) -> Path:
  """Where the record of the restore writing `folder` is kept: in the cache, not the folder.

  `<cache>/restore-runs/<SHA-256 of the folder's absolute path>.json` (cache: see
  vrt_jax.weights.cache_dir), so the output folder holds nothing but frames.
  """
  from vrt_jax import weights

  key = hashlib.sha256(str(Path(folder).absolute()).encode()).hexdigest()[:32]
  return weights.cache_dir() / RECORDS_DIR / f"{key}.json"


def forget_resume_record(folder: str | os.PathLike) -> None:
  resume_record_path(folder).unlink(missing_ok=True)


def params_fingerprint(variables: Any) -> str:
  """SHA-256 of the variables' tree structure, shapes, dtypes and bytes (identifies weights)."""
  digest = hashlib.sha256()
  leaves, treedef = jax.tree_util.tree_flatten(variables)
  digest.update(str(treedef).encode())
  for leaf in leaves:
    a = np.ascontiguousarray(np.asarray(leaf))
    digest.update(f"{a.shape}{a.dtype}".encode())
    digest.update(a.tobytes())
  return digest.hexdigest()


def run_record(restorer: Restorer, reader: Any, input_path: str, sigma: float) -> dict[str, Any]:
  """What determines the output frames of a restore: input, model, weights and noise level.

  Kept in the output folder so that resuming never mixes frames of two different runs.
  """
  return json.loads(json.dumps(dict(
      input=str(Path(input_path).resolve()), frames=int(reader.num_frames),
      height=int(reader.height), width=int(reader.width), preset=restorer.preset,
      model=restorer.model_kwargs, weights=params_fingerprint(restorer.variables),
      sigma=float(sigma)), default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v)))


def check_resume_record(folder: str, record: dict[str, Any], *, write: bool = True) -> None:
  """Records `record` for `folder` (resume_record_path), or refuses to resume a different run.

  Raises ValueError if the folder already holds frames and they were written for another input,
  model, weights or sigma, or by something else (no record): those frames would otherwise be
  kept as if they were this run's output. With `write=False` only checks.
  """
  path = resume_record_path(folder)
  has_frames = Path(folder).is_dir() and _holds_frames(Path(folder))
  if path.is_file():
    try:
      old = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
      old = None
    if old == record:
      return
    if has_frames:
      diff = (sorted(k for k in set(record) | set(old) if record.get(k) != old.get(k))
              if isinstance(old, dict) else ["unreadable record"])
      raise UserError(
          f"output folder {folder} holds frames of a different restore ({', '.join(diff)} "
          "differ); resuming would mix them with this run's. Use another output folder or "
          "delete it")
  elif has_frames:
    raise UserError(
        f"output folder {folder} already holds image files not written by vrt_jax.restore; they "
        "would be taken as restored frames. Use an empty or new folder")
  if write:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True))
    os.replace(tmp, path)
