"""Figures of a training run: a labelled side-by-side comparison and the training curves.

Both are written with matplotlib's Agg backend (no display needed) as PNG files.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np


def _pyplot():
  import matplotlib

  matplotlib.use("Agg")  # Files only: works without a display, in CI and over ssh.
  import matplotlib.pyplot as plt

  return plt


def detail_crop(gt: np.ndarray, size: int) -> tuple[int, int]:
  """Top-left corner of the `size` x `size` window of `gt` (H, W, C) with the most detail.

  Detail is the summed gradient magnitude, so the zoom shows edges and texture rather than sky.
  """
  h, w = gt.shape[:2]
  size = min(size, h, w)
  g = gt.mean(axis=-1)
  energy = np.zeros_like(g)
  energy[:, 1:] += np.abs(np.diff(g, axis=1))
  energy[1:] += np.abs(np.diff(g, axis=0))
  integral = np.pad(energy.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
  sums = (integral[size:, size:] - integral[:-size, size:] - integral[size:, :-size]
          + integral[:-size, :-size])
  top, left = np.unravel_index(int(np.argmax(sums)), sums.shape)
  return int(top), int(left)


def side_by_side(path: str, panels: Sequence[tuple[str, np.ndarray]], *,
                 crop_size: int | None = None, title: str = "") -> str:
  """Writes a PNG: the panels' frames in a row with their labels, zoomed crops below.

  panels: (label, frame (H, W, 3) in [0, 1]) pairs, all the same size; the last one is taken as
  the ground truth when choosing the crop (the window with the most detail, crop_size pixels a
  side, default a third of the frame). Frames are shown pixel for pixel (nearest neighbour),
  clipped to [0, 1]. Returns `path`.
  """
  plt = _pyplot()
  from matplotlib.patches import Rectangle

  frames = [np.clip(np.asarray(f, np.float32), 0.0, 1.0) for _, f in panels]
  h, w = frames[0].shape[:2]
  if any(f.shape != frames[0].shape for f in frames):
    raise ValueError(f"side_by_side needs frames of one size, got {[f.shape for f in frames]}.")
  size = crop_size or max(8, min(h, w) // 3)
  top, left = detail_crop(frames[-1], size)
  n = len(frames)
  fig, axes = plt.subplots(2, n, figsize=(2.9 * n, 6.3), squeeze=False)
  for i, ((label, _), frame) in enumerate(zip(panels, frames, strict=True)):
    ax = axes[0, i]
    ax.imshow(frame, interpolation="nearest")
    ax.add_patch(Rectangle((left - 0.5, top - 0.5), size, size, fill=False, edgecolor="yellow",
                           linewidth=1.5))
    ax.set_title(label, fontsize=10)
    zoom = axes[1, i]
    zoom.imshow(frame[top:top + size, left:left + size], interpolation="nearest")
    for a in (ax, zoom):
      a.set_xticks([])
      a.set_yticks([])
  axes[0, 0].set_ylabel(f"frame ({w}x{h})", fontsize=9)
  axes[1, 0].set_ylabel(f"zoom on the yellow box ({size}x{size})", fontsize=9)
  return _save(plt, fig, path, title=title, dpi=110)


def training_curves(path: str, records: Sequence[dict[str, float]], *,
                    baseline_psnr: float | None = None, baseline_label: str = "",
                    title: str = "") -> str:
  """Writes a PNG: training loss over steps (left) and validation PSNR over steps (right).

  records: metrics.jsonl records (step, loss_avg or loss; val_psnr, val_psnr_input on validation
  steps). The best classical baseline and the input are horizontal lines. Returns `path`.
  """
  plt = _pyplot()
  train = [r for r in records if "loss" in r]
  val = [r for r in records if "val_psnr" in r]
  fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(11, 4))
  if train:
    ax_loss.plot([r["step"] for r in train], [r.get("loss_avg", r["loss"]) for r in train],
                 color="tab:blue", label="Charbonnier loss (mean since the last log)")
    ax_loss.set_yscale("log")
    ax_loss.legend(loc="upper right", fontsize=9)
  ax_loss.set_xlabel("step")
  ax_loss.set_ylabel("training loss")
  ax_loss.set_title("training loss")
  ax_loss.grid(True, which="both", alpha=0.3)

  if val:
    steps = [r["step"] for r in val]
    ax_val.plot(steps, [r["val_psnr"] for r in val], "o-", color="tab:red", label="VRT")
    if all("val_psnr_input" in r for r in val):
      ax_val.axhline(val[-1]["val_psnr_input"], color="gray", linestyle=":",
                     label=f"input {val[-1]['val_psnr_input']:.2f} dB")
  if baseline_psnr is not None:
    ax_val.axhline(baseline_psnr, color="tab:green", linestyle="--",
                   label=f"best classical: {baseline_label} {baseline_psnr:.2f} dB")
  if train:
    ax_val.set_xlim(0, max(r["step"] for r in train) * 1.02)
  ax_val.set_xlabel("step")
  ax_val.set_ylabel("PSNR (dB)")
  ax_val.set_title("validation PSNR (held-out clips)")
  ax_val.grid(True, alpha=0.3)
  ax_val.legend(loc="best", fontsize=9)
  return _save(plt, fig, path, title=title, dpi=100)


def _save(plt, fig, path: str, *, title: str, dpi: int) -> str:
  """Titles, lays out and writes `fig` to `path` (creating its folder), then frees it."""
  if title:
    fig.suptitle(title, fontsize=11)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=dpi)
  plt.close(fig)
  return path
