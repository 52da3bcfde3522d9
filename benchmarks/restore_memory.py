"""Peak memory of `python -m vrt_jax.restore` versus clip length: it should not grow with frames.

  python benchmarks/restore_memory.py            # 50 and 300 frames, 256x256, tile 6x128x128
  python benchmarks/restore_memory.py --frames 50,300 --size 256 --tile_overlap 2,20,20
  python benchmarks/restore_memory.py --frames 100,1000 --size 64 --tile 6,64,64 --interrupt

The default overlap is 0 (4 spatial tiles per 6 frames instead of 9 with 20-pixel overlaps), so
the 300-frame run finishes in tens of minutes on a 2-core CPU; overlaps do not change the memory
behaviour, only the time.

Writes a synthetic clip of each length as a PNG frame folder, restores it with the tiny VRT
(random weights) in a fresh process (`python -m vrt_jax.restore`, CPU), and prints that process's
peak resident set size (ru_maxrss), the wall time and the frames per second. The restore streams
one temporal tile at a time, so the peak should be flat in the number of frames; for contrast the
table also gives the size of the whole input and output clips as float32 arrays.

With --interrupt each restore is first SIGKILLed just before writing frame N/2 (a pre-empted
job), then run again: the table's "computed" column is what the rerun restored (the frames
missing after the kill), "on disk" the frames present at the end (all N), and the peak RSS and
speed are the rerun's.
"""

from __future__ import annotations

import argparse
import os
import signal
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

# Runs the restore CLI in this child process, then reports the child's own peak RSS. With
# KILL_AT_FRAME set, the child SIGKILLs itself just before writing that output frame (a pre-empted
# job), to show the rerun resuming there.
CHILD = textwrap.dedent("""\
    import os, resource, signal, sys
    from vrt_jax import restore, video
    if os.environ.get("KILL_AT_FRAME"):
      kill_at, real_write = int(os.environ["KILL_AT_FRAME"]), video.FrameFolderWriter.write
      def write(self, t, frame):
        if t == kill_at:
          os.kill(os.getpid(), signal.SIGKILL)
        real_write(self, t, frame)
      video.FrameFolderWriter.write = write
    restore.main(sys.argv[1:])
    print("MAXRSS_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    """)


def write_weights(directory: Path) -> None:
  """Random tiny-VRT params, exported like `python -m vrt_jax.convert` does (with the record of
  the model, so restore needs no --preset or --config)."""
  import vrt_jax
  from vrt_jax import checkpoint, presets

  model = vrt_jax.VRT(**presets.tiny())
  checkpoint.export_params(str(directory), checkpoint.random_params(model), presets.tiny())


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
  parser.add_argument("--interrupt", action="store_true",
                      help="SIGKILL each restore halfway, then rerun it: the rerun must write "
                           "only the missing frames")
  args = parser.parse_args()
  lengths = [int(n) for n in args.frames.split(",")]
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    tmp = Path(tmp)
    write_weights(tmp / "weights")
    for n in lengths:
      write_clip(tmp / f"in{n}", n, args.size)
      cmd = [sys.executable, "-c", CHILD, str(tmp / f"in{n}"), str(tmp / f"out{n}"),
             "--weights", str(tmp / "weights"),
             "--tile", args.tile, "--tile_overlap", args.tile_overlap]
      env = {**os.environ, "JAX_PLATFORMS": "cpu"}
      killed_at = None
      if args.interrupt:
        killed_at = n // 2
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                              env={**env, "KILL_AT_FRAME": str(killed_at)})
        if proc.returncode != -signal.SIGKILL:
          sys.exit(f"the interrupted restore of {n} frames was not killed:\n"
                   f"{proc.stderr[-3000:]}")
        on_disk = len(list((tmp / f"out{n}").glob("*.png")))
        if on_disk != killed_at:
          sys.exit(f"{on_disk} frames on disk after a kill at frame {killed_at}")
      start = time.time()
      proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env)
      wall = time.time() - start
      if proc.returncode:
        sys.exit(f"restore of {n} frames failed:\n{proc.stderr[-3000:]}")
      kb = int(next(line.split()[1] for line in proc.stdout.splitlines()
                    if line.startswith("MAXRSS_KB")))
      # "N frames written (M already present)": what this (possibly resumed) run computed.
      summary = next(line for line in proc.stdout.splitlines() if "frames written" in line)
      computed = int(summary.split()[0])
      written = len(list((tmp / f"out{n}").glob("*.png")))
      clip_mb = n * args.size * args.size * 3 * 4 / 2**20
      rows.append((n, written, computed, kb / 1024, clip_mb, wall))
  print(f"\nrestore, tiny VRT, {args.size}x{args.size}, tile {args.tile}, overlap "
        f"{args.tile_overlap}, {jax.devices()[0].device_kind} (platform cpu)"
        + (", each run SIGKILLed at half its frames and rerun" if args.interrupt else ""))
  print(f"{'frames':>7s} {'on disk':>8s} {'computed':>9s} {'peak RSS MB':>12s} "
        f"{'clip f32 MB':>12s} {'wall s':>8s} {'frames/s':>9s}")
  for n, written, computed, rss, clip_mb, wall in rows:
    print(f"{n:7d} {written:8d} {computed:9d} {rss:12.0f} {clip_mb:12.0f} {wall:8.0f} "
          f"{computed / wall:9.2f}")
  print("\nreproduce: python benchmarks/restore_memory.py "
        f"--frames {args.frames} --size {args.size} --tile {args.tile} "
        f"--tile_overlap {args.tile_overlap}" + (" --interrupt" if args.interrupt else ""))


if __name__ == "__main__":
  main()
