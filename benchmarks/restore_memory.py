"""Peak memory of `python -m vrt_jax.restore` versus clip length: it should not grow with frames.

  python benchmarks/restore_memory.py            # 50 and 300 frames, 256x256, tile 6x128x128
  python benchmarks/restore_memory.py --frames 50,300 --size 256 --tile_overlap 2,20,20

The default overlap is 0 (4 spatial tiles per 6 frames instead of 9 with 20-pixel overlaps), so
the 300-frame run finishes in tens of minutes on a 2-core CPU; overlaps do not change the memory
behaviour, only the time.

Writes a synthetic clip of each length as a PNG frame folder, restores it with the tiny VRT
(random weights) in a fresh process (`python -m vrt_jax.restore`, CPU), and prints that process's
peak resident set size (ru_maxrss), the wall time and the frames per second. The restore streams
one temporal tile at a time, so the peak should be flat in the number of frames; for contrast the
table also gives the size of the whole input and output clips as float32 arrays.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import jax
import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]

TINY_CONFIG = textwrap.dedent("""\
    import ml_collections
    from vrt_jax import presets

    def get_config():
      config = ml_collections.ConfigDict()
      config.preset = None
      config.model = ml_collections.ConfigDict(presets.tiny())
      config.task = "deblur"
      config.scale = 1
      return config
    """)

# Runs the restore CLI in this child process, then reports the child's own peak RSS.
CHILD = textwrap.dedent("""\
    import resource, sys
    from vrt_jax import restore
    restore.main(sys.argv[1:])
    print("MAXRSS_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    """)


def write_weights(directory: Path) -> None:
  """Random tiny-VRT params, exported like `python -m vrt_jax.convert` does."""
  import vrt_jax
  from vrt_jax import checkpoint, presets

  model = vrt_jax.VRT(**presets.tiny())
  rng = np.random.default_rng(0)

  def fill(path, leaf):
    name = jax.tree_util.keystr(path)
    if "scale" in name:
      return np.ones(leaf.shape, leaf.dtype)
    if "bias" in name:
      return np.zeros(leaf.shape, leaf.dtype)
    return (0.05 * rng.standard_normal(leaf.shape)).astype(leaf.dtype)

  params = jax.tree_util.tree_map_with_path(fill, checkpoint.abstract_params(model))
  checkpoint.export_params(str(directory), params, presets.tiny())


def write_clip(folder: Path, num_frames: int, size: int) -> None:
  """A smooth random texture translated by (1, 2) pixels per frame, as 8-bit PNGs."""
  folder.mkdir(parents=True)
  rng = np.random.default_rng(0)
  coarse = rng.random((size // 8 + num_frames, size // 8 + num_frames, 3))
  texture = np.kron(coarse, np.ones((8, 8, 1)))  # blocky but cheap; motion is what matters
  for t in range(num_frames):
    y, x = t % (texture.shape[0] - size), (2 * t) % (texture.shape[1] - size)
    frame = (texture[y:y + size, x:x + size] * 255).round().astype(np.uint8)
    Image.fromarray(frame).save(folder / f"{t:08d}.png")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--frames", default="50,300", help="clip lengths, comma separated")
  parser.add_argument("--size", type=int, default=256, help="frame height and width")
  parser.add_argument("--tile", default="6,128,128", help="T,H,W tile for the restore")
  parser.add_argument("--tile_overlap", default="0,0,0", help="t,h,w overlap (0: fewer tiles)")
  args = parser.parse_args()
  lengths = [int(n) for n in args.frames.split(",")]
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    tmp = Path(tmp)
    write_weights(tmp / "weights")
    (tmp / "tiny_config.py").write_text(TINY_CONFIG)
    for n in lengths:
      write_clip(tmp / f"in{n}", n, args.size)
      cmd = [sys.executable, "-c", CHILD, str(tmp / f"in{n}"), str(tmp / f"out{n}"),
             "--config", str(tmp / "tiny_config.py"), "--weights", str(tmp / "weights"),
             "--tile", args.tile, "--tile_overlap", args.tile_overlap]
      start = time.time()
      proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                            env={**os.environ, "JAX_PLATFORMS": "cpu"})
      wall = time.time() - start
      if proc.returncode:
        sys.exit(f"restore of {n} frames failed:\n{proc.stderr[-3000:]}")
      kb = int(next(line.split()[1] for line in proc.stdout.splitlines()
                    if line.startswith("MAXRSS_KB")))
      written = len(list((tmp / f"out{n}").glob("*.png")))
      clip_mb = n * args.size * args.size * 3 * 4 / 2**20
      rows.append((n, written, kb / 1024, clip_mb, wall))
  print(f"\nrestore, tiny VRT, {args.size}x{args.size}, tile {args.tile}, overlap "
        f"{args.tile_overlap}, {jax.devices()[0].device_kind} (platform cpu)")
  print(f"{'frames':>7s} {'written':>8s} {'peak RSS MB':>12s} {'clip f32 MB':>12s} "
        f"{'wall s':>8s} {'frames/s':>9s}")
  for n, written, rss, clip_mb, wall in rows:
    print(f"{n:7d} {written:8d} {rss:12.0f} {clip_mb:12.0f} {wall:8.0f} {n / wall:9.2f}")
  print("\nreproduce: python benchmarks/restore_memory.py "
        f"--frames {args.frames} --size {args.size} --tile {args.tile} "
        f"--tile_overlap {args.tile_overlap}")


if __name__ == "__main__":
  main()
