"""Spatial parallelism in the compiled training step: per-device memory and the collectives.

  python benchmarks/space_hlo.py --config configs/demo.py --space 1,2,4 [--set data.gt_patch=128]

For each `space`, compiles the training step train.py runs (vrt_jax.train_step, the config's
optimizer, donation and sharding) for one clip whose rows are split over `space` fake CPU
devices (mesh 1 data x space), and reads the optimized HLO: per-device memory
(`compiled.memory_analysis()`: arguments, temporaries) and every all-gather, with its size and
whether it gathers a whole full-resolution activation (a shape holding the LQ or GT clip's H
and W). All-gathers inside `halo_fallback` (vrt_jax.spatial: a flow or offset reaching beyond
the halo) run only when needed and are listed apart. Every program uses the accelerator
kernels (`--kernels xla`, as split programs always do), so that space 1 is the same program
unsplit. One subprocess per compile; the CPU figures show the split's effect, not a TPU's
memory (benchmarks/tpu_compile.py does that).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import _common as common  # noqa: E402

COLUMNS = (("space", "space", ""), ("shape", "clip (B,T,H,W,C) per step", ""),
           ("argument_mib", "args MiB/dev", "{:.1f}"), ("temp_mib", "temp MiB/dev", "{:.1f}"),
           ("all_gathers", "all-gathers", ""), ("gathered_mib", "gathered MiB", "{:.2f}"),
           ("full_res", "full-res all-gathers", ""),
           ("fallback", "halo fallback all-gathers", ""),
           ("permutes", "collective-permutes", ""), ("compile_s", "compile s", "{:.0f}"))

_BYTES = {"f32": 4, "bf16": 2, "f16": 2, "s32": 4, "u32": 4, "pred": 1, "s8": 1, "u8": 1}


def all_gathers(hlo: str, full_res: list[tuple[int, int]]) -> list[dict[str, Any]]:
  """Every all-gather of an optimized HLO module: shape, MiB, where (op_name), whether it is a
  halo fallback and whether its result holds a whole full-resolution (H, W) plane."""
  found = []
  for line in hlo.splitlines():
    m = re.search(r"= (\w+)\[([\d,]*)\][^ ]* all-gather\(", line)
    if not m:
      continue
    dims = tuple(int(d) for d in m.group(2).split(",") if d)
    name = re.search(r'op_name="([^"]*)"', line)
    where = name.group(1) if name else ""
    size = _BYTES.get(m.group(1), 4)
    for d in dims:
      size *= d
    pairs = set(zip(dims, dims[1:], strict=False))
    found.append(dict(dtype=m.group(1), dims=dims, mib=size / 2**20, where=where,
                      fallback="halo_fallback" in where,
                      full_res=any(hw in pairs for hw in full_res)))
  return found


def worker(args: argparse.Namespace) -> None:
  import jax
  import jax.numpy as jnp

  import vrt_jax
  from vrt_jax import optim, sharding, train_step
  from vrt_jax.data import pipeline

  config = common_config(args.config, args.set)
  config.batch_size, config.num_devices, config.mesh.space = 1, args.space, args.space
  mesh = sharding.make_mesh(config)
  shapes = pipeline.batch_shapes(config.data, config.batch_size)
  sharding.check_space_split(mesh, shapes["lq"])
  model = vrt_jax.VRT(**config.model.to_dict())
  tx, _ = optim.make_optimizer(config.optim)
  state = train_step.abstract_state(model, tx, mesh)
  step = train_step.jit_train_step(model, tx, config, mesh, jax.random.key(0), frozen=False,
                                   state_sharding=jax.tree.map(lambda a: a.sharding, state))
  batch = {k: jax.ShapeDtypeStruct(s, jnp.float32, sharding=sharding.batch_sharding(mesh))
           for k, s in shapes.items()}
  t0 = time.perf_counter()
  compiled = step.lower(state, batch).compile()
  mem = compiled.memory_analysis()
  full_res = [tuple(s[2:4]) for s in shapes.values()]
  gathers = all_gathers(compiled.as_text(), full_res)
  kept = [g for g in gathers if not g["fallback"]]
  common.emit(dict(
      space=args.space, shape="x".join(map(str, shapes["lq"])),
      compile_s=time.perf_counter() - t0, argument_mib=mem.argument_size_in_bytes / 2**20,
      temp_mib=mem.temp_size_in_bytes / 2**20, all_gathers=len(kept),
      gathered_mib=sum(g["mib"] for g in kept), full_res=sum(g["full_res"] for g in kept),
      fallback=len(gathers) - len(kept),
      permutes=len(re.findall(r" collective-permute(?:-start)?\(", compiled.as_text())),
      gathers=[{k: (list(v) if k == "dims" else v) for k, v in g.items()} for g in gathers]))


def common_config(path: str, overrides: list[str]) -> Any:
  import tpu_compile  # The same config loading and key=value overrides.

  return tpu_compile.load_config(path, overrides)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
  parser.add_argument("--config", default="configs/demo.py", help="training config file")
  parser.add_argument("--space", default="1,2,4", help="devices per clip, comma-separated")
  parser.add_argument("--set", action="append", default=[],
                      help="config override key=value (e.g. data.gt_patch=128), repeatable")
  parser.add_argument("--json", default="", help="also write the rows to this file")
  parser.add_argument("--list", action="store_true",
                      help="also list every all-gather (shape, MiB, where)")
  parser.add_argument("--kernels", default="xla", choices=("xla", "cpu"),
                      help="VRT_JAX_KERNELS of every program (split ones use xla regardless)")
  parser.add_argument("--timeout", type=float, default=3600, help="seconds per compile")
  parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker:
    args.space = int(args.space)
    return worker(args)
  rows = []
  for space in [int(s) for s in args.space.split(",") if s.strip()]:
    print(f"compiling the training step of {args.config} over {space} device(s) ...",
          file=sys.stderr, flush=True)
    env = dict(os.environ, JAX_PLATFORMS="cpu", VRT_JAX_KERNELS=args.kernels,
               XLA_FLAGS=f"--xla_force_host_platform_device_count={space}")
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--config", args.config,
           "--space", str(space), *sum((["--set", s] for s in args.set), [])]
    rows.append(common.run_worker(cmd, timeout=args.timeout, env=env))
  print()
  common.print_table(rows, COLUMNS, None)
  if args.list:
    for row in rows:
      print(f"\nspace {row['space']}: all-gathers")
      for g in row["gathers"]:
        print(f"  {g['dtype']}{g['dims']} {g['mib']:.3f} MiB"
              f"{' fallback' if g['fallback'] else ''}{' FULL-RES' if g['full_res'] else ''}"
              f"  {g['where'][-110:]}")
  print(f"\n{common.reproduce_line()}")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(rows, f, indent=2)


if __name__ == "__main__":
  main()
