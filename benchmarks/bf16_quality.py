"""PSNR of a trained VRT restoring in bfloat16 compute against float32, on held-out clips.

  python benchmarks/bf16_quality.py --workdir /tmp/vrt-demo [--kernels xla]

Loads the latest checkpoint of a training workdir (its config.json names the model and the
data), restores the run's validation clips (`pipeline.make_val_clips`, the same clips, tiling and
8-bit PSNR as train.py's validation) with `VRT(dtype=float32)` and `VRT(dtype=bfloat16)`
(parameters float32, activations bfloat16; LayerNorm statistics, softmax, flows and sampling
positions float32), and prints a table of per-clip PSNR and the difference. `--kernels` picks
the implementation (vrt_jax.kernels; `xla` is what a TPU or GPU runs).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
  parser.add_argument("--workdir", required=True, help="a training workdir (config.json)")
  parser.add_argument("--kernels", choices=("cpu", "xla"), default="xla")
  args = parser.parse_args()
  os.environ["VRT_JAX_KERNELS"] = args.kernels

  import jax.numpy as jnp
  import ml_collections
  import numpy as np

  import vrt_jax
  from vrt_jax import checkpoint, inference, metrics
  from vrt_jax.data import pipeline

  with open(os.path.join(args.workdir, "config.json")) as f:
    config = ml_collections.ConfigDict(json.load(f))
  kwargs = config.model.to_dict()
  kwargs.pop("dtype", None)  # The run's own compute dtype; both are compared below.
  params = checkpoint.load_params(args.workdir, vrt_jax.VRT(**kwargs))
  clips = pipeline.make_val_clips(config.data, num_clips=config.data.val_clips,
                                  seed=config.seed + 1)
  rows = []
  for dtype in (jnp.float32, jnp.bfloat16):
    model = vrt_jax.VRT(**kwargs, dtype=dtype)
    psnrs = []
    for clip in clips:
      out = inference.restore(model, {"params": params}, clip["lq"][None],
                              tile=tuple(config.eval.tile),
                              tile_overlap=tuple(config.eval.tile_overlap), progress=False)[0]
      psnrs.append(float(np.mean([metrics.psnr(metrics.to_uint8(o), metrics.to_uint8(g))
                                  for o, g in zip(out, clip["gt"], strict=True)])))
    rows.append((jnp.dtype(dtype).name, psnrs))
  (_, f32), (_, bf16) = rows
  print(f"| compute dtype | {' | '.join(f'clip {i}' for i in range(len(f32)))} | mean PSNR (dB) |")
  print("|---" * (len(f32) + 2) + "|")
  for name, psnrs in rows:
    print(f"| {name} | {' | '.join(f'{p:.3f}' for p in psnrs)} | {np.mean(psnrs):.3f} |")
  print(f"\nbfloat16 - float32: {np.mean(bf16) - np.mean(f32):+.3f} dB mean, per clip "
        f"{', '.join(f'{b - a:+.3f}' for a, b in zip(f32, bf16, strict=True))} "
        f"(kernels: {args.kernels}; {len(clips)} held-out clips of {args.workdir})")
  print(f"Reproduce: python {' '.join(sys.argv)}")


if __name__ == "__main__":
  main()
