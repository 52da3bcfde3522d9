"""Evaluation on the official test sets: tiled restoration, PSNR / SSIM tables, result files.

`eval.py` parses flags and calls `evaluate_from_config`; the steps are library functions so tests
and notebooks can call them on their own models and clips.
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vrt_jax import inference, metrics, presets, video
from vrt_jax.data import testsets

METRIC_KEYS = ("psnr", "ssim", "psnr_y", "ssim_y")
LAYOUTS = ("paired", "vimeo", "davis", "vfi")


def build_model(config: Any) -> Any:
  """The VRT of a config (`config.model` holds the constructor kwargs)."""
  import vrt_jax

  kwargs = config.model.to_dict() if hasattr(config.model, "to_dict") else dict(config.model)
  return vrt_jax.VRT(**kwargs)


def default_layout(task: str, lq_root: str | None) -> str:
  """Test-set layout implied by the task (Vimeo is recognised by its `sequences/` folder)."""
  return infer_layout(task, lq_root)[0]


def infer_layout(task: str, lq_root: str | None) -> tuple[str, str]:
  """(layout, why): the layout implied by the task and the input folder, and the reason."""
  if task == "vfi":
    return "vfi", "frame interpolation task"
  if task == "denoise" and not lq_root:
    return "davis", "denoising task with --gt only: noise is added at --sigma"
  if lq_root and ((Path(lq_root) / "sequences").is_dir()
                  or (Path(lq_root).parent / "sep_testlist.txt").is_file()):
    return "vimeo", f"{lq_root} is a Vimeo-90K folder"
  if task == "denoise":
    return "paired", "denoising task with --lq: noisy inputs, noise map at --sigma"
  return "paired", "one subfolder per clip in --lq (and --gt)"


def check_layout(layout: str, model: Any, sigma: float) -> None:
  """A layout the model can be scored on: raises ValueError saying what to change."""
  spec = inference.ModelSpec.from_model(model)
  nonblind = spec.in_channels == model.in_chans + 1
  if spec.is_interpolation != (layout == "vfi"):
    raise ValueError(
        f"layout {layout} does not fit this model ("
        f"{'frame interpolation' if spec.is_interpolation else 'restoration'}): use --layout "
        f"{'vfi' if spec.is_interpolation else 'paired, vimeo or davis'}")
  if layout == "davis" and not nonblind:
    raise ValueError("the davis layout adds noise for a non-blind denoiser, but this model takes "
                     "no noise map: use --layout paired with --lq")
  if nonblind and not sigma:
    raise ValueError("this is a non-blind denoising model: give the noise level with --sigma "
                     "(0-255 scale, e.g. --sigma 20)")


def default_tiling(preset: str | None, kind: str = "paired"
                   ) -> tuple[tuple[int, ...], tuple[int, ...]]:
  """Official tile / overlap: per model, except on Vimeo-90K-T and DAVIS frame interpolation.

  kind: the `TestSet.kind` (Vimeo SR clips are 8 frames tested whole, the official (8, 0, 0);
  VFI on DAVIS uses (0, 256, 256) / (0, 20, 20)).
  """
  if kind in ("vimeo", "vfi_vimeo", "vfi_ucf101"):
    return (0, 0, 0), (0, 0, 0)
  if kind == "vfi_davis":
    return (0, 256, 256), (0, 20, 20)
  if preset:
    settings = presets.TEST_SETTINGS[preset]
    return tuple(settings["tile"]), tuple(settings["tile_overlap"])
  return (0, 0, 0), (0, 0, 0)


def make_testset(layout: str, *, lq: str | None, gt: str | None, sigma: float = 0
                 ) -> testsets.TestSet:
  """The test set of a layout: paired (LQ, GT), vimeo (LQ, GT), davis (GT + sigma), vfi (GT)."""
  if layout not in LAYOUTS:
    raise ValueError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
  if layout == "paired":
    if not lq:
      raise ValueError("the paired layout needs --lq (and --gt to score)")
    return testsets.paired(lq, gt)
  if layout == "vimeo":
    if not (lq and gt):
      raise ValueError("the vimeo layout needs --lq and --gt")
    return testsets.vimeo(lq, gt)
  root = gt or lq
  if not root:
    raise ValueError(f"the {layout} layout needs --gt (the ground-truth frames)")
  if layout == "davis":
    return testsets.davis_denoise(root, sigma)
  return testsets.vfi(root)


def _check_pair(clip: testsets.TestClip, num_out: int, scale: int) -> None:
  """Before restoring: GT frames must be scale x the LQ size and match the scored outputs."""
  if clip.gt is None:
    return
  h, w = clip.lq.shape[1:3]
  if clip.gt.shape[1:3] != (h * scale, w * scale):
    raise ValueError(
        f"clip {clip.name}: GT frames are {clip.gt.shape[1:3]} but LQ frames {(h, w)} x scale "
        f"{scale} = {(h * scale, w * scale)}")
  if max(clip.out_index) >= num_out or len(clip.out_index) != clip.gt.shape[0]:
    raise ValueError(f"clip {clip.name}: {clip.gt.shape[0]} GT frames do not match the "
                     f"{num_out} output frames")


def save_comparison(path: str | os.PathLike, lq: np.ndarray, out: np.ndarray,
                    gt: np.ndarray | None, *, min_height: int = 0) -> None:
  """PNG of input (nearest-upsampled to the output size) | output | ground truth, side by side.

  min_height: frames lower than this are enlarged (nearest, by a whole factor) to be looked at;
  0 keeps the output's size.
  """
  lq = np.clip(lq[..., :3], 0, 1)  # Drop a noise-map channel; noisy inputs exceed [0, 1].
  s_h, s_w = out.shape[0] // lq.shape[0], out.shape[1] // lq.shape[1]
  panels = [lq.repeat(s_h, axis=0).repeat(s_w, axis=1), out]
  if gt is not None:
    panels.append(gt)
  row = np.concatenate(panels, axis=1)
  zoom = max(1, min_height // row.shape[0])
  Path(path).parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(metrics.to_uint8(row.repeat(zoom, axis=0).repeat(zoom, axis=1))).save(path)


def input_baseline(clip: testsets.TestClip, scale: int) -> np.ndarray | None:
  """The input frames that stand beside the scored outputs, at the output size: the LQ frame of
  each scored index (noise-map channel dropped, clipped to [0, 1]), MATLAB-bicubic upscaled
  for super-resolution. None for frame interpolation (no input frame is the target's)."""
  lq = np.asarray(clip.lq)
  if clip.gt is None or max(clip.out_index) >= lq.shape[0] or lq.shape[0] < len(clip.out_index):
    return None
  frames = np.clip(lq[clip.out_index][..., :3], 0, 1).astype(np.float32)
  if scale > 1:
    from vrt_jax.data import imresize

    frames = np.clip(imresize.imresize(frames, scale), 0, 1)
  return frames if frames.shape == clip.gt.shape else None


def with_noise_map(clip: testsets.TestClip, in_channels: int, sigma: float) -> testsets.TestClip:
  """A noisy clip of a paired denoising set with the noise map (sigma / 255) appended, where the
  model takes one and the clip has none (the davis layout appends it itself)."""
  lq = np.asarray(clip.lq)
  if lq.shape[-1] + 1 != in_channels:
    return clip
  if not sigma:
    raise ValueError("this is a non-blind denoising model: give the noise level of the inputs "
                     "with --sigma (0-255 scale)")
  noise_map = np.full(lq.shape[:-1] + (1,), sigma / 255.0, np.float32)
  return dataclasses.replace(clip, lq=np.concatenate([lq, noise_map], axis=-1))


def evaluate(model: Any, variables: Any, testset: Iterable[testsets.TestClip], *,
             tile: Sequence[int], tile_overlap: Sequence[int], output_dir: str | None = None,
             save_images: bool = False, apply_fn: inference.ApplyFn | None = None,
             sigma: float = 0, comparison_path: str | os.PathLike | None = None,
             comparison_min_height: int = 0, clips_per_call: int = 1,
             comparison_fn: Callable[[testsets.TestClip, np.ndarray], None] | None = None,
             log=print) -> dict[str, Any]:
  """Restores every clip, scores the frames named by `out_index`, averages per clip then overall.

  sigma: the noise level (0-255) of a paired denoising set's inputs, for a non-blind denoiser:
  the noise map is appended to clips that lack it.
  Returns {"clips": [{"name", "frames", psnr, ssim, psnr_y, ssim_y, input_psnr}], "average":
  {...}}; input_psnr scores the input itself (`input_baseline`); clips without GT have no
  metrics. With `output_dir`, writes `comparison.png` (the middle scored frame of the first clip,
  input | output | ground truth at the output's full size: `save_comparison`) and, with
  `save_images`, `<output_dir>/<clip>/<frame>.png`. comparison_path: the comparison's file
  instead (with or without `output_dir`); comparison_min_height: see `save_comparison`.
  comparison_fn: called with the first clip and its scored output frames to draw a comparison
  of its own (training's labelled side-by-side), in place of `save_comparison`.
  apply_fn: the compiled forward pass (`inference.make_apply_fn`); pass the same one to every
  call (e.g. each validation of a training run) so that it compiles once.
  clips_per_call: clips restored side by side, one per group of devices on the data axis of
  `apply_fn`'s mesh (`sharding.data_size`); consecutive clips of one shape go together.
  """
  spec = inference.ModelSpec.from_model(model)
  apply_fn = apply_fn or inference.make_apply_fn(model)
  rows: list[dict[str, Any]] = []
  if output_dir:
    video.probe_writable(output_dir)  # Fail now, not after restoring the whole test set.

  def checked(clips: Iterable[testsets.TestClip]) -> Iterator[testsets.TestClip]:
    for i, clip in enumerate(clips):
      clip = with_noise_map(clip, spec.in_channels, sigma)
      lq = np.asarray(clip.lq)
      if lq.ndim != 4:
        raise ValueError(f"clip {clip.name}: LQ must be (T, H, W, C); got shape {lq.shape}")
      _check_pair(clip, 1 if spec.is_interpolation else lq.shape[0], spec.scale)
      if i == 0:
        log(f"{clip.name:24s} compiling the model for its tiles, then restoring")
      yield clip

  def restore(group: list[testsets.TestClip]) -> list[np.ndarray]:
    # A short last group repeats its last clip: every call has the batch the mesh was split for.
    lqs = [np.asarray(c.lq) for c in group]
    lqs += lqs[-1:] * (clips_per_call - len(group))
    try:
      out = inference.restore(model, variables, np.stack(lqs), tile=tile,
                              tile_overlap=tile_overlap, apply_fn=apply_fn, progress=False)
    except ValueError as e:
      raise ValueError(f"clip {group[0].name}: {e}" if len(group) == 1 else
                       f"clips {', '.join(c.name for c in group)}: {e}") from e
    return list(out[:len(group)])

  def restored(clips: Iterable[testsets.TestClip]
               ) -> Iterator[tuple[testsets.TestClip, np.ndarray]]:
    group: list[testsets.TestClip] = []
    for clip in itertools.chain(clips, [None]):
      if group and (clip is None or len(group) == clips_per_call
                    or np.shape(clip.lq) != np.shape(group[0].lq)):
        yield from zip(group, restore(group), strict=True)
        group = []
      if clip is not None:
        group.append(clip)

  for i, (clip, out) in enumerate(restored(checked(testset))):
    scored = out[clip.out_index]
    row: dict[str, Any] = {"name": clip.name, "frames": len(clip.out_index)}
    if clip.gt is not None:
      row.update(metrics.clip_metrics(scored, clip.gt))
      baseline = input_baseline(clip, spec.scale)
      if baseline is not None:
        row["input_psnr"] = float(np.mean([
            metrics.psnr(metrics.to_uint8(b), metrics.to_uint8(g))
            for b, g in zip(baseline, clip.gt, strict=True)]))
      log(f"{clip.name:24s} " + "  ".join(f"{k} {row[k]:.4f}" for k in METRIC_KEYS)
          + (f"  (input psnr {row['input_psnr']:.4f})" if "input_psnr" in row else ""))
    else:
      log(f"{clip.name:24s} restored")
    rows.append(row)
    if output_dir and save_images:
      clip_dir = Path(output_dir) / clip.name
      clip_dir.mkdir(parents=True, exist_ok=True)
      for name, frame in zip(clip.frame_names, scored, strict=True):
        video.write_image(clip_dir / f"{name}.png", frame)
    if i == 0 and comparison_fn is not None:
      comparison_fn(clip, scored)
    elif i == 0 and (comparison_path or output_dir):
      mid = len(clip.out_index) // 2
      lq_frame = clip.lq[min(clip.out_index[mid], clip.lq.shape[0] - 1)]
      save_comparison(comparison_path or Path(output_dir) / "comparison.png", lq_frame,
                      scored[mid], None if clip.gt is None else clip.gt[mid],
                      min_height=comparison_min_height)
  if not rows:
    raise ValueError("the test set has no clips")
  scored_rows = [r for r in rows if "psnr" in r]
  average = ({k: float(np.mean([r[k] for r in scored_rows])) for k in METRIC_KEYS}
             if scored_rows else {})
  if scored_rows and all("input_psnr" in r for r in scored_rows):
    average["input_psnr"] = float(np.mean([r["input_psnr"] for r in scored_rows]))
  return {"clips": rows, "average": average}


def format_table(results: dict[str, Any]) -> str:
  """A fixed-width table: one row per clip, then the average over clips; the input's PSNR
  (`input_psnr`) stands beside the output's where it is known."""
  header = (f"{'clip':24s} {'frames':>6s} {'PSNR':>8s} {'SSIM':>8s} {'PSNR_Y':>8s} "
            f"{'SSIM_Y':>8s} {'PSNR_in':>8s}")
  lines = [header, "-" * len(header)]

  def fmt(name: str, frames: Any, m: dict[str, float]) -> str:
    if not m:
      return f"{name:24s} {frames!s:>6s} " + " ".join(f"{'-':>8s}" for _ in range(5))
    psnr_in = f"{m['input_psnr']:8.2f}" if "input_psnr" in m else f"{'-':>8s}"
    return (f"{name:24s} {frames!s:>6s} {m['psnr']:8.2f} {m['ssim']:8.4f} {m['psnr_y']:8.2f} "
            f"{m['ssim_y']:8.4f} {psnr_in}")

  for r in results["clips"]:
    lines.append(fmt(r["name"], r["frames"], r if "psnr" in r else {}))
  lines.append("-" * len(header))
  lines.append(fmt("average", sum(r["frames"] for r in results["clips"]), results["average"]))
  return "\n".join(lines)


def write_results(results: dict[str, Any], output_dir: str | os.PathLike,
                  extra: dict[str, Any] | None = None) -> None:
  """Writes results.json (clips, average and `extra` settings) and results.csv."""
  output_dir = Path(output_dir)
  output_dir.mkdir(parents=True, exist_ok=True)
  with open(output_dir / "results.json", "w") as f:
    json.dump({**(extra or {}), **results}, f, indent=2)
  with open(output_dir / "results.csv", "w", newline="") as f:
    writer = csv.writer(f)
    keys = (*METRIC_KEYS, "input_psnr")
    writer.writerow(["clip", "frames", *keys])
    for r in results["clips"]:
      writer.writerow([r["name"], r["frames"], *(r.get(k, "") for k in keys)])
    writer.writerow(["average", sum(r["frames"] for r in results["clips"]),
                     *(results["average"].get(k, "") for k in keys)])


def evaluate_from_config(config: Any, *, checkpoint: str, lq: str | None, gt: str | None,
                         output_dir: str, layout: str | None = None, sigma: float = 0,
                         tile: Sequence[int] | None = None,
                         tile_overlap: Sequence[int] | None = None, save_images: bool = False,
                         checkpoint_fallback: bool = False, space: int = 1,
                         log=print) -> dict[str, Any]:
  """What `eval.py` runs: model from the config, weights, test set, table and result files.

  checkpoint: a released model name (downloaded and converted once), an official .pth, an
  exported directory or a training workdir.
  Everything is checked before the model runs (layout, noise level, folders, weights); a run
  that fails leaves no output folder it created.
  checkpoint_fallback: for a training workdir whose latest checkpoint is unreadable, evaluate the
  latest earlier readable one (with a warning naming the skipped step) instead of failing.
  space: devices that split each tile's rows (spatial parallelism, `sharding.space_mesh`); the
  process's remaining devices form the data axis, over which whole clips are spread.
  """
  import shutil

  from vrt_jax import checkpoint as checkpoint_lib
  from vrt_jax import sharding, weights

  mesh = sharding.space_mesh(space, spread=True)
  clips_per_call = sharding.data_size(mesh)
  created = video.first_missing(Path(output_dir))
  try:
    model = build_model(config)
    if layout:
      why = "given"
    else:
      layout, why = infer_layout(config.task, lq)
    check_layout(layout, model, sigma)
    testset = make_testset(layout, lq=lq, gt=gt, sigma=sigma)
    if not os.path.exists(checkpoint) and checkpoint in weights.MODELS:
      checkpoint = str(weights.fetch(checkpoint, log=log))
    params = checkpoint_lib.load_params(checkpoint, model, fallback=checkpoint_fallback)
    video.probe_writable(output_dir)
    default_tile, default_overlap = default_tiling(config.get("preset"), testset.kind)
    tile = tuple(tile) if tile else default_tile
    tile_overlap = tuple(tile_overlap) if tile_overlap else default_overlap
    log(f"{len(testset)} clips, layout {layout} ({why}), tile {tile}, overlap {tile_overlap}"
        + (f", sigma {sigma:g}" if sigma else "")
        + (f"; {clips_per_call} clips at a time on {mesh.size} devices"
           if clips_per_call > 1 else "")
        + (f"; each clip's rows split over {space} devices" if space > 1 else ""))
    started = time.perf_counter()
    results = evaluate(model, {"params": params}, testset, tile=tile, tile_overlap=tile_overlap,
                       output_dir=output_dir, save_images=save_images, sigma=sigma, log=log,
                       apply_fn=inference.make_apply_fn(model, mesh),
                       clips_per_call=clips_per_call)
    seconds = time.perf_counter() - started
    log(format_table(results))
    frames = sum(int(np.asarray(c["frames"])) for c in results["clips"])
    log(f"{len(results['clips'])} clips, {frames} scored frames in {seconds:.1f} s "
        f"({frames / seconds:.2f} frames/s, compiling included)")
    write_results(results, output_dir, extra=dict(
        checkpoint=str(checkpoint), lq=lq, gt=gt, layout=layout, sigma=sigma, tile=list(tile),
        tile_overlap=list(tile_overlap), preset=config.get("preset"), task=config.task,
        space=space, devices=mesh.size))
  except BaseException:
    if created is not None:
      shutil.rmtree(created, ignore_errors=True)
    raise
  return results


