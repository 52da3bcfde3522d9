"""Tiled inference: restore clips of any length and size with a fixed-size model call.

This is the official test procedure of VRT (`test_video` / `test_clip` in `main_test_vrt.py`):

* Temporal tiles of `tile[0]` frames start at
  `range(0, T - tile[0], stride) + [max(0, T - tile[0])]` with `stride = tile[0] - tile_overlap[0]`;
  outputs are averaged where tiles overlap.
* A temporal tile at least as long as the clip is one tile of the clip's own length, unpadded
  (the reference's `lq[:, 0:tile]`); only a temporal tile of 0 pads T to the window. A clip
  shorter than the model's minimum (`ModelSpec.min_frames`, which the reference cannot run) is
  padded as for tile 0.
* Each temporal tile is cut into spatial tiles the same way (`tile[1]` rows, `tile[2]` columns; the
  reference uses `tile[1]` for both). On interior tile edges half the overlap is dropped (the
  reference zeroes ceil(o/2) output rows/columns at a tile's end and floor(o/2) at its start),
  then the overlapping contributions are averaged.
* A tile size of 0 means the whole dimension: T is padded to a multiple of `window_size[0]` by
  appending the last frames in reverse order, H and W to multiples of `window_size[1:]` by mirroring
  the last rows/columns, and the output is cropped back.

Because the index lists end at `max(0, d - tile)`, every tile is full-size whenever the clip is at
least a tile long, so all tiles share one shape and one compiled function. Where the reference
itself is ill-defined or cannot run, we do this:

* A frame smaller than the spatial tile is one tile of its own size, as in the reference, where
  the model accepts that size; the JAX model wants H and W multiples of 8 and at least 8 windows
  (64 pixels; above 32 with flows, `vrt.min_hw`), so smaller or odd-sized frames are mirror-padded
  up to the next size it accepts (as for tile 0) and cropped back. (The reference feeds them
  unpadded: PyTorch VRT shrinks its windows below 64 pixels and fails on sizes that are not
  multiples of 8.)
* A spatial overlap of 0 drops nothing. The reference's `out[..., -0:, :] *= 0` zeroes the whole
  tile for overlap 0, which makes its output NaN.

Frame interpolation models (`pa_frames == 0`) map `img_size[0]` input frames to one frame; they
are never tiled in time: the whole input (which must have `img_size[0]` frames) is one temporal
tile and the output has a single frame.

Inputs are checked before any model call (`check_clip`): rank 5, the model's channel count, a
floating dtype (uint8 is refused with the /255 hint rather than guessed), finite values, a range
near [0, 1]. Automatic conversions, as the reference does them: frames smaller than the model's
minimum are mirror-padded and cropped back; a clip too short for the model (or any clip under
temporal tile 0) is padded with its frames in reverse order, so a single frame is restored from
itself twice (pa_frames 2; models with pa_frames 4 or 6 need 2 input frames and refuse 1).

Memory: one tile at a time is on the device; results accumulate on the host in float32 numpy and
`restore_stream` hands frames out as soon as no later tile touches them, so a streaming caller
holds about one temporal tile of input and output at a time.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from tqdm.auto import tqdm

from vrt_jax import memory, sharding, spatial

# Noisy denoising inputs are not clipped, so allow some slack around [0, 1] before calling the
# input mis-scaled; a 0-255 image is far outside this.
_RANGE_SLACK = 1.5

ApplyFn = Callable[[Any, np.ndarray], Any]


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """What tiled inference needs to know about a model (read from a VRT module's fields)."""

  scale: int
  window_size: tuple[int, int, int]
  in_channels: int  # Including the noise-map channel of non-blind denoising.
  out_channels: int
  pa_frames: int
  num_frames: int  # img_size[0]: the input length of frame interpolation models.
  min_hw: tuple[int, int]  # Smallest H, W the model accepts.

  @classmethod
  def from_model(cls, model: Any) -> ModelSpec:
    nonblind = bool(getattr(model, "nonblind_denoising", False))
    in_chans = int(getattr(model, "in_chans", 3))
    out_chans = int(getattr(model, "out_chans", 3))
    img_size = tuple(getattr(model, "img_size", (6, 64, 64)))
    window = tuple(int(w) for w in model.window_size)
    # VRT downsamples by 8 and needs a whole window there (and SpyNet a pyramid); other
    # modules only the multiple.
    from vrt_jax.vrt import VRT, min_hw

    least = (min_hw(window, int(model.pa_frames)) if isinstance(model, VRT)
             else (window[1], window[2]))
    return cls(
        scale=int(model.upscale),
        window_size=window,
        in_channels=in_chans + (1 if nonblind else 0),
        out_channels=out_chans,
        pa_frames=int(model.pa_frames),
        num_frames=int(img_size[0]),
        min_hw=least)

  @property
  def is_interpolation(self) -> bool:
    return self.pa_frames == 0

  @property
  def min_frames(self) -> int:
    """Fewest frames the model accepts (VRT's parallel warping looks pa_frames // 2 ahead)."""
    return {0: self.num_frames, 2: 2, 4: 3, 6: 4}.get(self.pa_frames, 2)


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
  """Start indices of the tiles along one dimension, exactly as the reference lists them."""
  stride = tile - overlap
  return list(range(0, size - tile, stride)) + [max(0, size - tile)]


def mirror_pad(x: np.ndarray, axis: int, multiple: int, minimum: int = 0, *,
               extend: bool = True) -> np.ndarray:
  """Pads `axis` to a multiple (and at least `minimum`) by appending its last entries reversed.

  This is the reference's `torch.cat([x, torch.flip(x[-pad:])])`, which appends at most the whole
  axis once. With `extend` (used for H and W, which our model needs at full multiples) a longer
  pad continues the reflection symmetrically; without it (time, which the model pads itself) the
  reference's shortfall is kept.
  """
  size = x.shape[axis]
  target = max(size + (multiple - size % multiple) % multiple, minimum)
  pad = target - size if extend else min(target - size, size)
  if not pad:
    return x
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, pad)
  return np.pad(x, widths, mode="symmetric")


def check_clip(lq: Any, in_channels: int, *, name: str = "lq") -> np.ndarray:
  """Validates a (B, T, H, W, C) float clip in [0, 1] and returns it as float32 numpy."""
  shape = getattr(lq, "shape", None)
  if shape is None or len(shape) != 5:
    raise ValueError(f"{name} must be a (B, T, H, W, C) array; got shape {shape}")
  dtype = np.dtype(getattr(lq, "dtype", np.float32))
  # jnp.issubdtype also knows bfloat16 (an ml_dtypes type numpy does not call floating).
  if not jnp.issubdtype(dtype, jnp.floating):
    raise ValueError(
        f"{name} must be floating point in [0, 1]; got dtype {dtype}. Convert uint8 frames with "
        "x.astype(np.float32) / 255.")
  if shape[-1] != in_channels:
    raise ValueError(
        f"{name} must have {in_channels} channels (the model's input"
        f"{' incl. the noise map' if in_channels == 4 else ''}); got {shape[-1]}")
  if min(shape) == 0:
    raise ValueError(f"{name} is empty: shape {shape}")
  x = np.asarray(lq, dtype=np.float32)
  if not np.isfinite(x).all():
    raise ValueError(f"{name} contains NaN or Inf values")
  lo, hi = float(x.min()), float(x.max())
  if hi > 1 + _RANGE_SLACK or lo < -_RANGE_SLACK:
    raise ValueError(
        f"{name} values must lie in [0, 1]; got range [{lo:.3g}, {hi:.3g}]. "
        "Did you pass 0-255 values? Divide by 255.")
  return x


def make_apply_fn(model: Any, mesh: Mesh | None = None) -> Callable[[Any, np.ndarray], Any]:
  """One jitted eval forward pass; equal tile shapes share its single compilation (after which
  the compiler's scratch memory goes back to the OS).

  mesh: with several devices on its 'space' axis (`sharding.space_mesh`), each call splits the
  clip's rows over them and the model's activations stay split (spatial parallelism: a tile
  `space` times larger fits); outputs equal the one-device ones up to float32 rounding. With
  several on its 'data' axis, a call's batch of clips (a multiple of that axis) is spread over it.
  """
  def apply(variables: Any, x: Any) -> Any:
    return model.apply(variables, x)

  if mesh is None or mesh.size == 1:
    return memory.CompiledPerShape(apply)
  clip, replicated = sharding.batch_sharding(mesh), sharding.replicated(mesh)
  compiled = memory.CompiledPerShape(spatial.traced_under(mesh, apply),
                                     in_shardings=(replicated, clip), out_shardings=clip)
  placed: list[Any] = [None, None]  # The variables last seen and their copy on the mesh.

  def split_apply(variables: Any, x: Any) -> Any:
    if placed[0] is not variables:
      placed[:] = [variables, jax.device_put(variables, replicated)]
    return compiled(placed[1], jax.device_put(x, clip))

  return split_apply


class _Restorer:
  """Runs spatial tiles of one temporal tile (the reference's `test_clip`)."""

  def __init__(self, spec: ModelSpec, apply_fn: ApplyFn, variables: Any,
               tile: Sequence[int], tile_overlap: Sequence[int]):
    if len(tile) != 3 or len(tile_overlap) != 3:
      raise ValueError(f"tile and tile_overlap must be (T, H, W); got {tile}, {tile_overlap}")
    if any(int(t) < 0 for t in tile) or any(int(o) < 0 for o in tile_overlap):
      raise ValueError(f"tile and tile_overlap must be non-negative; got {tile}, {tile_overlap}")
    for i, axis in enumerate("THW"):
      if tile[i] and tile_overlap[i] >= tile[i]:
        raise ValueError(
            f"tile_overlap[{i}] ({axis}) = {tile_overlap[i]} must be smaller than "
            f"tile[{i}] = {tile[i]}")
    if not spec.is_interpolation and 0 < tile[0] < spec.min_frames:
      raise ValueError(
          f"temporal tile {tile[0]} is too short: this model (pa_frames = {spec.pa_frames}) "
          f"needs at least {spec.min_frames} frames per tile (or 0 for the whole clip)")
    for i in (1, 2):
      if tile[i] % spec.window_size[i] or 0 < tile[i] < spec.min_hw[i - 1]:
        raise ValueError(
            f"spatial tile {tile[i]} must be a multiple of window_size[{i}] = "
            f"{spec.window_size[i]} and at least {spec.min_hw[i - 1]} (or 0 for the whole frame)")
    self.spec = spec
    self.apply_fn = apply_fn
    self.variables = variables
    self.tile = tuple(int(t) for t in tile)
    self.overlap = tuple(int(o) for o in tile_overlap)
    self._seen: set[tuple[int, ...]] = set()

  def _apply(self, patch: np.ndarray, pbar: tqdm | None) -> np.ndarray:
    """One model call; the first call of a shape compiles, shown as such and kept out of the
    progress bar's rate and ETA."""
    first = patch.shape not in self._seen
    self._seen.add(patch.shape)
    pbar = None if pbar is None or pbar.disable else pbar
    if first and pbar is not None:
      desc = pbar.desc
      pbar.set_description_str(f"compiling for {'x'.join(map(str, patch.shape[1:4]))}")
    out = np.array(self.apply_fn(self.variables, patch), dtype=np.float32)
    if first and pbar is not None:
      pbar.set_description_str(desc, refresh=False)
      pbar.unpause()  # Restart the timer: the rate and ETA count running, not compiling.
    return out

  def temporal_plan(self, num_frames: int) -> tuple[list[int], int, bool]:
    """Temporal tile starts, tile length and whether to pad T.

    Only a temporal tile of 0 (and frame interpolation, which takes the whole input) pads T to
    the window, as the reference does. A tile at least as long as the clip runs the clip at its
    own length, unpadded (the reference's single tile `lq[:, 0:tile]`); the model pads its
    attention windows itself. The one exception: a clip too short for the model's parallel
    warping (fewer than `min_frames`), which the reference cannot run at all, is padded as for
    tile 0.
    """
    t_tile = self.tile[0]
    if self.spec.is_interpolation or not t_tile:
      return [0], num_frames, True
    if num_frames <= t_tile:
      return [0], num_frames, num_frames < self.spec.min_frames
    return tile_starts(num_frames, t_tile, self.overlap[0]), t_tile, False

  def spatial_plan(self, h: int, w: int) -> list[tuple[list[int], int, int]]:
    """Per spatial axis: (starts, tile length, overlap); whole-axis tiles are padded later."""
    plan = []
    for size, tile, overlap, window, minimum in zip(
        (h, w), self.tile[1:], self.overlap[1:], self.spec.window_size[1:], self.spec.min_hw,
        strict=True):
      if not tile or size < tile:
        padded = max(size + (window - size % window) % window, minimum)
        plan.append(([0], padded, 0))
      else:
        plan.append((tile_starts(size, tile, overlap), tile, overlap))
    return plan

  def restore_clip(self, clip: np.ndarray, *, pad_time: bool,
                   pbar: tqdm | None = None) -> np.ndarray:
    """(B, t, H, W, Cin) -> (B, t_out, sH, sW, Cout): spatial tiling of one temporal tile.

    `pad_time`: mirror-pad T to the temporal window first (untiled time, as the reference does
    for tile 0); full-size temporal tiles go to the model as they are.
    """
    s = self.spec.scale
    b, t, h, w, _ = clip.shape
    t_out = 1 if self.spec.is_interpolation else t
    if pad_time:
      clip = mirror_pad(clip, 1, self.spec.window_size[0], extend=False)
    (h_starts, th, oh), (w_starts, tw, ow) = self.spatial_plan(h, w)
    if th > h:
      clip = mirror_pad(clip, 2, self.spec.window_size[1], self.spec.min_hw[0])
    if tw > w:
      clip = mirror_pad(clip, 3, self.spec.window_size[2], self.spec.min_hw[1])
    out_h, out_w = max(h, th) * s, max(w, tw) * s
    c_out = self.spec.out_channels
    acc = np.zeros((b, t_out, out_h, out_w, c_out), np.float32)
    weight = np.zeros((1, 1, out_h, out_w, 1), np.float32)
    for hi in h_starts:
      for wi in w_starts:
        patch = clip[:, :, hi:hi + th, wi:wi + tw]
        out = self._apply(patch, pbar)[:, :t_out]
        expected = (b, t_out, th * s, tw * s, c_out)
        if out.shape != expected:
          raise ValueError(f"model output shape {out.shape}, expected {expected}")
        mask = np.ones((1, 1, th * s, tw * s, 1), np.float32)
        # Drop half the overlap on interior edges (rows/cols at output resolution, as the
        # reference does: ceil(o/2) at the end of a tile, floor(o/2) at the start).
        for axis, starts, start, o in ((2, h_starts, hi, oh), (3, w_starts, wi, ow)):
          if o == 0:  # The reference would zero the whole tile here (its output is NaN).
            continue
          if start < starts[-1]:
            _zero(out, mask, axis, slice(-o // 2, None))
          if start > starts[0]:
            _zero(out, mask, axis, slice(None, o // 2))
        region = (slice(None), slice(None), slice(hi * s, hi * s + th * s),
                  slice(wi * s, wi * s + tw * s))
        acc[region] += out
        weight[region] += mask
        if pbar is not None:
          pbar.update(1)
    acc /= weight
    return acc[:, :, :h * s, :w * s]


def describe_tiling(model: Any, shape: Sequence[int], tile: Sequence[int],
                    tile_overlap: Sequence[int]) -> str:
  """One line saying how a (T, H, W) clip is actually tiled: tile counts and the model's input.

  E.g. `2 temporal x 2 x 3 spatial tiles of 12 x 128 x 128 (overlap 2, 20, 20)`; a dimension run
  whole says so, with the padded size the model sees.
  """
  spec = ModelSpec.from_model(model)
  restorer = _Restorer(spec, lambda v, x: x, None, tile, tile_overlap)
  t, h, w = (int(v) for v in shape)
  t_starts, t_len, pad_time = restorer.temporal_plan(t)
  if pad_time and not spec.is_interpolation:
    t_len = mirror_pad(np.zeros((t_len, 1)), 0, spec.window_size[0], extend=False).shape[0]
  (h_starts, th, oh), (w_starts, tw, ow) = restorer.spatial_plan(h, w)
  counts = f"{len(t_starts)} temporal x {len(h_starts)} x {len(w_starts)} spatial tile"
  counts += "" if len(t_starts) * len(h_starts) * len(w_starts) == 1 else "s"
  line = f"{counts} of {t_len} x {th} x {tw}"
  overlap = (restorer.overlap[0] if len(t_starts) > 1 else 0, oh if len(h_starts) > 1 else 0,
             ow if len(w_starts) > 1 else 0)
  if any(overlap):
    line += f" (overlap {overlap[0]}, {overlap[1]}, {overlap[2]})"
  padded = [f"{a} {n} -> {m}" for a, n, m in (("T", t, t_len), ("H", h, th), ("W", w, tw))
            if m > n and (a != "T" or len(t_starts) == 1)]
  if padded:
    line += f"; mirror-padded {', '.join(padded)}"
  return line


def space_split_note(model: Any, shape: Sequence[int], tile: Sequence[int],
                     tile_overlap: Sequence[int], space: int) -> str:
  """Why a (T, H, W) clip's tiles would not be split over `space` devices, or ''.

  A split needs the rows of the model's input (the tile height, or the padded frame height) to
  divide evenly at VRT's 1/8 scale; otherwise every device samples and warps whole frames:
  the output is the same, but little memory is saved.
  """
  if space <= 1:
    return ""
  restorer = _Restorer(ModelSpec.from_model(model), lambda v, x: x, None, tile, tile_overlap)
  height = restorer.spatial_plan(int(shape[1]), int(shape[2]))[0][1]
  if height % (8 * space) == 0:
    return ""
  return (f"the model's input height {height} is not a multiple of {8 * space}, so --space "
          f"{space} cannot split its rows at every scale and saves little memory (each device "
          f"samples whole frames); give --tile T,H,W with H a multiple of {8 * space}")


def _zero(out: np.ndarray, mask: np.ndarray, axis: int, sl: slice) -> None:
  index = [slice(None)] * out.ndim
  index[axis] = sl
  out[tuple(index)] = 0
  mask[tuple(index)] = 0


def restore_stream(
    model: Any, variables: Any, read: Callable[[int, int], np.ndarray], num_frames: int, *,
    tile: Sequence[int], tile_overlap: Sequence[int],
    frame_done: Callable[[int], bool] | None = None, apply_fn: ApplyFn | None = None,
    progress: bool = True,
) -> Iterator[tuple[int, np.ndarray]]:
  """Restores a clip read piecewise, yielding output frames in order as soon as they are final.

  Args:
    model: a VRT module (or anything with its `upscale`, `window_size`, `pa_frames`, `in_chans`,
      `out_chans`, `img_size`, `nonblind_denoising` fields and an `apply`).
    variables: the model variables.
    read: `read(start, stop)` returns input frames [start, stop) as (B, stop - start, H, W, Cin)
      float32 in [0, 1].
    num_frames: T, the clip length.
    tile, tile_overlap: (T, H, W) tile size and overlap; 0 means the whole dimension.
    frame_done: optional `frame_done(t) -> bool` for resuming: a temporal tile whose output frames
      are all done is skipped, and done frames are not yielded. A frame that is not done is still
      averaged over every tile covering it, since all those tiles contain it and therefore run.
    apply_fn: optional `apply_fn(variables, x)` replacing `jax.jit(model.apply)`.
    progress: show a tqdm bar of tiles done.

  Yields:
    (t, frame) with frame (B, s*H, s*W, Cout) float32; for frame interpolation a single frame t=0.
  """
  spec = ModelSpec.from_model(model)
  if spec.is_interpolation and num_frames != spec.num_frames:
    raise ValueError(
        f"frame interpolation model takes exactly img_size[0] = {spec.num_frames} frames; "
        f"got {num_frames}")
  if num_frames < 1:
    raise ValueError(f"the clip has no frames (num_frames = {num_frames})")
  restorer = _Restorer(spec, apply_fn or make_apply_fn(model), variables, tile, tile_overlap)
  starts, t_tile, pad_time = restorer.temporal_plan(num_frames)
  if pad_time and not spec.is_interpolation:
    # Mirror padding at most doubles a short clip (the reference's flip), so a single frame
    # becomes two: enough for pa_frames 2, too few for 4 and 6. Refuse here, not in the model.
    padded = mirror_pad(np.zeros((t_tile, 1)), 0, spec.window_size[0], extend=False).shape[0]
    if padded < spec.min_frames:
      raise ValueError(
          f"the clip has {num_frames} frame(s); this model (pa_frames = {spec.pa_frames}) needs "
          f"at least {spec.min_frames} frames after mirror padding, i.e. at least "
          f"{(spec.min_frames + 1) // 2} input frames")
  num_out = 1 if spec.is_interpolation else num_frames
  done = frame_done or (lambda t: False)

  def out_frames(start: int) -> range:
    return range(0, 1) if spec.is_interpolation else range(start, min(start + t_tile, num_frames))

  todo = [k for k, start in enumerate(starts) if not all(done(t) for t in out_frames(start))]
  acc: dict[int, np.ndarray] = {}
  count: dict[int, int] = {}
  next_out = 0
  pbar = None
  for k in todo:
    start = starts[k]
    stop = min(start + t_tile, num_frames)
    clip = check_clip(read(start, stop), spec.in_channels)
    if clip.shape[1] != stop - start:
      raise ValueError(f"read({start}, {stop}) returned {clip.shape[1]} frames")
    if pbar is None:
      (h_starts, _, _), (w_starts, _, _) = restorer.spatial_plan(clip.shape[2], clip.shape[3])
      pbar = tqdm(total=len(todo) * len(h_starts) * len(w_starts), desc="restore", unit="tile",
                  disable=not progress)
    out = restorer.restore_clip(clip, pad_time=pad_time, pbar=pbar)
    for i, t in enumerate(out_frames(start)):
      if t in acc:
        acc[t] += out[:, i]
        count[t] += 1
      else:
        acc[t] = out[:, i].copy()
        count[t] = 1
    # Frames before the next tile's start get no further contributions.
    final = num_out if k + 1 == len(starts) else starts[k + 1]
    while next_out < final:
      if next_out in acc:
        frame = acc.pop(next_out) / np.float32(count.pop(next_out))
        if not done(next_out):
          yield next_out, frame
      next_out += 1
  if pbar is not None:
    pbar.close()


def restore(
    model: Any, variables: Any, lq: Any, *, tile: Sequence[int] = (0, 0, 0),
    tile_overlap: Sequence[int] = (0, 0, 0), apply_fn: ApplyFn | None = None,
    progress: bool = True,
) -> np.ndarray:
  """Restores a whole clip with the official tiled test procedure.

  Args:
    model: a VRT module (see `restore_stream`).
    variables: its variables, e.g. `{"params": params}`.
    lq: (B, T, H, W, Cin) float32 in [0, 1], numpy or jax; Cin includes the noise map for
      non-blind denoising.
    tile: (T, H, W) tile size; 0 means the whole dimension (mirror-padded to the window).
    tile_overlap: (T, H, W) overlap between neighbouring tiles.
    apply_fn: optional replacement for `jax.jit(model.apply)`, `apply_fn(variables, x)`.
    progress: show a tqdm bar of tiles done.

  Returns:
    (B, T_out, s*H, s*W, Cout) float32 numpy, T_out = T (1 for frame interpolation).
  """
  spec = ModelSpec.from_model(model)
  x = check_clip(lq, spec.in_channels)
  b, t, h, w, _ = x.shape
  s = spec.scale
  out = np.empty((b, 1 if spec.is_interpolation else t, h * s, w * s, spec.out_channels),
                 np.float32)
  for i, frame in restore_stream(
      model, variables, lambda a, z: x[:, a:z], t, tile=tile, tile_overlap=tile_overlap,
      apply_fn=apply_fn, progress=progress):
    out[:, i] = frame
  return out
