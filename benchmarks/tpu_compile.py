"""Per-chip memory and FLOPs of vrt-jax on a TPU, compiled ahead of time on this CPU host.

  pip install -e ".[tpu]"     # libtpu: compiles for any TPU topology, no TPU needed
  python benchmarks/tpu_compile.py --config configs/sr_reds.py --topology v5e:2x4 \\
      --program train [--set model.remat=full] [--json out.json] [--hlo_dir hlo/]
  python benchmarks/tpu_compile.py --preset 001_VRT_videosr_bi_REDS_6frames \\
      --topology v5e:2x4 --program eval [--eval_tile 12,64,64]

`--set mesh.space=N` compiles the training step with each clip's rows split over N chips (a
(chips / N) data x N space mesh, vrt_jax.sharding; e.g. v5e:4x8 with batch_size 8 and
mesh.space 4), the way train.py runs with that config. `--space N` does the same for the eval
forward: one tile's rows over N chips, as `vrt-restore --space N` runs it.

`train` compiles the training step train.py runs (vrt_jax.train_step.jit_train_step: the same
loss, optimizer, donation and data-parallel sharding) for the config's global batch over all
chips of the topology (the official recipes: batch 8, so one clip per chip on 8 chips), with
SpyNet and the deformable convolutions trained (the larger of the recipe's two steps). `eval`
compiles the forward of a released model for one official test tile
(`vrt_jax.presets.TEST_SETTINGS`, clipped to the size of the official test set's clips) on one
chip. The kernels are the accelerator ones (vrt_jax.kernels chooses them from the platform
compiled for).

Each program compiles in its own subprocess. A full-size program needs 10-25 minutes and
10-15 GB of RAM on 2 cores: run one at a time. Printed per program: the per-chip sizes from
`compiled.memory_analysis()` (arguments, outputs, aliased, temporaries; peak = arguments +
outputs - aliased + temporaries), whether it fits the chip's HBM (a program that does not fit
fails to compile with RESOURCE_EXHAUSTED: then "no" and the compiler's figure), TFLOPs per
step from `compiled.cost_analysis()` (which counts a loop body once, so programs with loops
are undercounted), and the compile time. From the compiled program's HLO text
(benchmarks/roofline.py): TFLOPs with every loop iteration counted, HBM traffic in GB (padded to
the TPU's tiles), the roofline time on the topology's chip and its bound (compute or memory);
when one program is compiled, also the per-part table. `--hlo_dir` writes each compiled
program's text (for roofline.py or `../shared/tools/hlo_roofline.py`).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(1, ROOT)

import _common as common  # noqa: E402
import roofline  # noqa: E402

# Usable HBM per device as libtpu reports it (GiB): v5e 16 GiB (15.75 usable), v4 32, v5p 95,
# v6e 32.
INFO_TAG = "BENCH_INFO "
HBM_GIB = {"v5e": 15.75, "v4": 32.0, "v5p": 95.0, "v6e": 32.0}
# The size of the official test sets' clips (frames, LQ height, LQ width): a test tile larger
# than the clip shrinks to it, as in main_test_vrt.py.
TEST_CLIP = {
    "001_VRT_videosr_bi_REDS_6frames": (100, 180, 320),    # REDS4
    "002_VRT_videosr_bi_REDS_16frames": (100, 180, 320),   # REDS4
    "003_VRT_videosr_bi_Vimeo_7frames": (8, 64, 112),      # Vimeo-90K-T, 7 frames padded to 8
    "004_VRT_videosr_bd_Vimeo_7frames": (8, 64, 112),
    "005_VRT_videodeblurring_DVD": (100, 720, 1280),
    "006_VRT_videodeblurring_GoPro": (100, 720, 1280),
    "007_VRT_videodeblurring_REDS": (100, 720, 1280),
    "008_VRT_videodenoising_DAVIS": (100, 480, 854),
    "009_VRT_videofi_Vimeo_4frames": (4, 256, 448),
}
COLUMNS = (("program", "program", ""), ("name", "config / preset", ""), ("shape", "input", ""),
           ("topology", "topology", ""), ("kernels", "kernels", ""),
           ("argument_gib", "args GiB", "{:.2f}"), ("output_gib", "out GiB", "{:.2f}"),
           ("alias_gib", "aliased GiB", "{:.2f}"), ("temp_gib", "temp GiB", "{:.2f}"),
           ("peak_gib", "peak GiB", "{:.2f}"), ("hbm_gib", "HBM GiB", "{:.2f}"),
           ("fits", "fits", ""), ("tflops", "TFLOP (loops once)", "{:.2f}"),
           ("tflop_total", "TFLOP (all loops)", "{:.2f}"), ("hbm_gb", "HBM GB (padded)", "{:.1f}"),
           ("roofline_ms", "roofline ms (chip)", "{:.1f}"), ("bound", "bound", ""),
           ("compile_s", "compile s", "{:.0f}"))


def tpu_env(topology: str) -> dict[str, str]:
  """The environment under which libtpu compiles for `topology` on a CPU host."""
  env = dict(os.environ)
  env.setdefault("TPU_SKIP_MDS_QUERY", "1")
  env.setdefault("TPU_ACCELERATOR_TYPE", "v5litepod-8")
  env["JAX_PLATFORMS"] = "cpu"
  return env


def parse_override(item: str) -> tuple[list[str], Any]:
  """'model.remat=full' -> (['model', 'remat'], 'full'); values are JSON where they parse."""
  key, _, value = item.partition("=")
  try:
    parsed = json.loads(value)
  except json.JSONDecodeError:
    parsed = value
  return key.split("."), tuple(parsed) if isinstance(parsed, list) else parsed


def load_config(path: str, overrides: list[str]) -> Any:
  """get_config() of a config file, with `key=value` overrides."""
  spec = importlib.util.spec_from_file_location("vrt_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  for item in overrides:
    (*parents, leaf), value = parse_override(item)
    node = config
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def eval_shape(preset: str) -> tuple[int, ...]:
  """(1, T, H, W, Cin): the official test tile of `preset`, clipped to its test clips."""
  from vrt_jax import presets

  kwargs = presets.get_preset(preset)
  tile = presets.TEST_SETTINGS[preset]["tile"]
  clip = TEST_CLIP[preset]
  t, h, w = (c if s == 0 else min(s, c) for s, c in zip(tile, clip, strict=True))
  if kwargs.get("pa_frames", 2) == 0:
    t = kwargs["img_size"][0]
  h, w = -(-h // 8) * 8, -(-w // 8) * 8  # The test pads H and W to multiples of 8.
  cin = kwargs.get("in_chans", 3) + (1 if kwargs.get("nonblind_denoising") else 0)
  return (1, t, h, w, cin)


def worker(args: argparse.Namespace) -> None:
  import jax
  import jax.numpy as jnp
  import numpy as np
  from jax.experimental import topologies

  import vrt_jax
  from vrt_jax import checkpoint, kernels, optim, sharding, spatial, train_step
  from vrt_jax.data import pipeline

  topo = topologies.get_topology_desc(platform="tpu", topology_name=args.topology)
  kind = args.topology.split(":")[0]
  result: dict[str, Any] = {"program": args.program, "topology": args.topology,
                            "kernels": kernels.forced() or "per platform (xla)",
                            "hbm_gib": HBM_GIB.get(kind)}
  if args.program == "train":
    config = load_config(args.config, args.set)
    devices = np.array(topo.devices)
    space = int(config.get("mesh", {}).get("space", 1))  # --set mesh.space=4: rows split.
    mesh = sharding.grid_mesh(devices, space)
    # The configs' remat 'auto' resolves for the platform compiled for, not this CPU host's.
    config.model.remat = kernels.resolve_remat(config.model.get("remat", "none"), "tpu")
    model = vrt_jax.VRT(**config.model.to_dict())
    tx, _ = optim.make_optimizer(config.optim)
    state = train_step.abstract_state(model, tx, mesh)
    step = train_step.jit_train_step(model, tx, config, mesh, jax.random.key(0), frozen=False,
                                     state_sharding=jax.tree.map(lambda a: a.sharding, state))
    shapes = pipeline.batch_shapes(config.data, config.batch_size)
    sharding.check_space_split(mesh, shapes["lq"])
    batch = {k: jax.ShapeDtypeStruct(s, jnp.float32, sharding=sharding.batch_sharding(mesh))
             for k, s in shapes.items()}
    result.update(name=os.path.basename(args.config) + "".join(f" {s}" for s in args.set),
                  shape="x".join(map(str, batch["lq"].shape)) + f" over {devices.size} chips"
                  + (f" ({devices.size // space} data x {space} space)" if space > 1 else ""))
    fn, fn_args = step, (state, batch)
  else:
    space = args.space  # One clip's rows over `space` chips (vrt-restore --space).
    mesh = sharding.grid_mesh(topo.devices[:space], space)
    replicated = sharding.replicated(mesh)
    kwargs = vrt_jax.presets.get_preset(args.preset)
    for item in args.set:  # Only model.* overrides apply to a preset.
      (*parents, leaf), value = parse_override(item)
      if parents == ["model"]:
        kwargs[leaf] = value
    kwargs["remat"] = kernels.resolve_remat(kwargs.get("remat", "none"), "tpu")
    model = vrt_jax.VRT(**kwargs)
    shape = eval_shape(args.preset)
    if args.eval_tile:
      shape = (1, *(int(v) for v in args.eval_tile.split(",")), shape[-1])
    params = jax.eval_shape(lambda: checkpoint.random_params(model))
    params = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated),
                          params)
    sharding.check_space_split(mesh, shape)
    clip = sharding.batch_sharding(mesh)
    x = jax.ShapeDtypeStruct(shape, jnp.float32, sharding=clip)
    result.update(name=args.preset + "".join(f" {s}" for s in args.set),
                  shape="x".join(map(str, shape))
                  + (f" over {space} chips (space)" if space > 1 else " on 1 chip"))
    apply = spatial.traced_under(mesh, lambda p, x: model.apply({"params": p}, x))
    fn, fn_args = jax.jit(apply, out_shardings=clip), (params, x)

  result["kernels"] += f", remat {model.remat}"
  print(INFO_TAG + json.dumps(result), flush=True)  # What is compiled (for --until_buffers).
  t0 = time.perf_counter()
  try:
    with kernels.compiling_for("tpu"):  # Not this CPU host's kernels.
      compiled = fn.lower(*fn_args).compile()
  except Exception as e:  # noqa: BLE001 - the compiler's verdict is the result.
    text = str(e)
    if "RESOURCE_EXHAUSTED" not in text:
      raise
    result.update(fits="no", compile_s=time.perf_counter() - t0,
                  error=text.splitlines()[0][:300])
    m = re.search(r"temporaries \(?([0-9.]+)([GM])", text)
    if m:
      result["temp_gib"] = float(m.group(1)) / (1024 if m.group(2) == "M" else 1)
    common.emit(result)
    return
  result["compile_s"] = time.perf_counter() - t0
  mem = compiled.memory_analysis()
  gib = lambda b: b / 2**30
  result.update(argument_gib=gib(mem.argument_size_in_bytes),
                output_gib=gib(mem.output_size_in_bytes),
                alias_gib=gib(mem.alias_size_in_bytes), temp_gib=gib(mem.temp_size_in_bytes))
  result["peak_gib"] = (result["argument_gib"] + result["output_gib"] - result["alias_gib"]
                        + result["temp_gib"])
  hbm = result["hbm_gib"]
  result["fits"] = "yes" if hbm is None or result["peak_gib"] <= hbm else "no"
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  result["tflops"] = float(cost.get("flops", 0.0)) / 1e12
  hlo = compiled.as_text()
  # Seconds next to the compile's minutes; a parse failure must not lose the compile's result.
  try:
    report = roofline.analyze(hlo)
  except Exception as e:  # noqa: BLE001
    result["roofline_error"] = f"{type(e).__name__}: {e}"[:300]
  else:
    report.pop("loops")  # The row keeps the parts and per-chip rooflines, not every loop.
    result.update(tflop_total=report["flops"] / 1e12, hbm_gb=report["hbm_bytes_padded"] / 1e9,
                  hbm_gb_logical=report["hbm_bytes"] / 1e9, roofline=report)
    on_chip = report["roofline"].get(kind)  # None for a chip kind without figures.
    if on_chip:
      result.update(roofline_ms=on_chip["time_s"] * 1e3, bound=on_chip["bound"])
  if args.hlo_dir:
    os.makedirs(args.hlo_dir, exist_ok=True)
    label = re.sub(r"[^\w.-]+", "_", f"{args.program}_{result['name']}_{args.topology}")
    path = os.path.join(args.hlo_dir, label + ".hlo.txt")
    with open(path, "w") as f:
      f.write(hlo)
    result["hlo"] = path
  common.emit(result)


def buffer_assignment_sizes(path: str) -> tuple[float, float]:
  """(temporaries, arguments) in GiB from a buffer-assignment dump: the preallocated HBM
  temporaries (allocations without a memory-space colour) and the parameters."""
  temp = args = 0
  with open(path) as f:
    for line in f:
      m = re.match(r"allocation \d+: size (\d+), (.*)", line)
      if not m:
        continue
      if "preallocated-temp" in m.group(2) and "color" not in m.group(2):
        temp += int(m.group(1))
      elif "parameter" in m.group(2):
        args += int(m.group(1))
  return temp / 2**30, args / 2**30


def until_buffer_assignment(cmd: list[str], env: dict[str, str], timeout: float,
                            row: dict[str, Any], dump_dir: str = "") -> dict[str, Any]:
  """Runs a worker with XLA dumps on and stops it once libtpu has assigned the program's
  buffers (minutes; the code generation after it can take half an hour for a split program),
  reading per-chip temporaries and arguments from the dump. The worker's own result if it
  finishes first. `dump_dir`: keep the dump there (its memory-usage report names the largest
  buffers) instead of a temporary folder."""
  import contextlib
  import glob
  import signal
  import tempfile

  if dump_dir:
    os.makedirs(dump_dir, exist_ok=True)
  with (contextlib.nullcontext(dump_dir) if dump_dir else
        tempfile.TemporaryDirectory(prefix="vrt_tpu_dump_")) as dump:
    env = dict(env, XLA_FLAGS=f"{env.get('XLA_FLAGS', '')} --xla_dump_to={dump} "
               "--xla_dump_hlo_as_text".strip())
    t0 = time.perf_counter()
    log = os.path.join(dump, "worker.log")
    with open(log, "w") as out:
      proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, text=True,
                              start_new_session=True)

    def tagged(tag: str) -> dict[str, Any] | None:
      with open(log) as f:
        for line in f:
          if line.startswith(tag):
            return json.loads(line[len(tag):])
      return None

    try:
      while proc.poll() is None:
        # The TPU program's dump (the host's small jitted helpers are named cpu_...).
        done = [f for f in glob.glob(os.path.join(dump, "*after_optimizations-buffer-assignment"
                                                   ".txt")) if ".cpu_after" not in f]
        reports = glob.glob(os.path.join(dump, "*after_optimizations-memory-usage-report.txt"))
        if done and any(".cpu_after" not in r for r in reports):
          time.sleep(5)  # Let the dump be written out.
          temp, arguments = buffer_assignment_sizes(max(done, key=os.path.getsize))
          row = dict(row, **(tagged(INFO_TAG) or {}))
          hbm = row.get("hbm_gib")
          return dict(row, argument_gib=arguments, temp_gib=temp, peak_gib=arguments + temp,
                      fits="-" if hbm is None else
                      ("yes" if arguments + temp <= hbm else "no") + " (buffers)",
                      compile_s=time.perf_counter() - t0, stage="buffer assignment")
        if time.perf_counter() - t0 > timeout:
          raise subprocess.TimeoutExpired(cmd, timeout)
        time.sleep(5)
      result = tagged(common.RESULT_TAG)
      if result is None:
        with open(log) as f:
          raise RuntimeError(f"benchmark worker failed (exit {proc.returncode}):\n"
                             f"{f.read()[-3000:]}")
      return result
    finally:
      if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
  parser.add_argument("--config", action="append", default=[],
                      help="training config file(s) for --program train (repeatable)")
  parser.add_argument("--preset", action="append", default=[],
                      help="released model(s) for --program eval (repeatable; 'all' = nine)")
  parser.add_argument("--topology", default="v5e:2x4",
                      help="TPU topologies, comma-separated (v5e:2x4, v4:2x2x1, v5e:4x8, ...)")
  parser.add_argument("--program", default="train,eval", help="train, eval or both")
  parser.add_argument("--set", action="append", default=[],
                      help="config override key=value (e.g. model.remat=full), repeatable")
  parser.add_argument("--eval_tile", default="",
                      help="T,H,W: compile the eval forward for this LQ tile instead of the "
                           "preset's official one (e.g. 12,64,64)")
  parser.add_argument("--space", type=int, default=1,
                      help="eval: split the tile's rows over this many chips of the topology "
                           "(as vrt-restore --space does)")
  parser.add_argument("--until_buffers", action="store_true",
                      help="stop each compile at libtpu's buffer assignment and report the "
                           "per-chip temporaries and arguments it assigned (minutes instead of "
                           "half an hour for large split programs; no TFLOPs)")
  parser.add_argument("--dump_dir", default="",
                      help="with --until_buffers: keep XLA's dump of the (last) program here; "
                           "its *memory-usage-report.txt lists the largest buffers")
  parser.add_argument("--json", default="", help="also write the rows to this file")
  parser.add_argument("--hlo_dir", default="", help="write each compiled program's HLO text "
                      "(for benchmarks/roofline.py; its roofline is reported either way)")
  parser.add_argument("--timeout", type=float, default=3600, help="seconds per program")
  parser.add_argument("--worker", default="", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker:
    args.program = args.worker
    args.config = args.config[0] if args.config else ""
    args.preset = args.preset[0] if args.preset else ""
    return worker(args)

  from vrt_jax import presets

  programs = [p.strip() for p in args.program.split(",") if p.strip()]
  if bad := [p for p in programs if p not in ("train", "eval")]:
    parser.error(f"--program: {bad} (use train, eval or train,eval)")
  preset_names = list(presets.TEST_SETTINGS) if args.preset == ["all"] else args.preset
  jobs = []
  for topology in [t.strip() for t in args.topology.split(",") if t.strip()]:
    if "train" in programs:
      jobs += [("train", ["--config", c], topology) for c in args.config]
    if "eval" in programs:
      jobs += [("eval", ["--preset", p], topology) for p in preset_names]
  if args.space < 1:
    parser.error(f"--space must be at least 1, got {args.space}")
  if not jobs:
    parser.error("nothing to compile: give --config for train and/or --preset for eval")
  rows = []
  for program, what, topology in jobs:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", program, *what,
           "--topology", topology, *sum((["--set", s] for s in args.set), []),
           *(["--hlo_dir", args.hlo_dir] if args.hlo_dir else []),
           *(["--eval_tile", args.eval_tile] if args.eval_tile else []), "--space",
           str(args.space)]
    print(f"compiling {program} {' '.join(what[1:])} for {topology} ...", file=sys.stderr,
          flush=True)
    try:
      if args.until_buffers:
        row = until_buffer_assignment(cmd, tpu_env(topology), args.timeout, {
            "program": program, "name": " ".join([what[1], *args.set]), "topology": topology,
            "hbm_gib": HBM_GIB.get(topology.split(":")[0])}, args.dump_dir)
      else:
        row = common.run_worker(cmd, timeout=args.timeout, env=tpu_env(topology))
    except subprocess.TimeoutExpired:
      row = {"program": program, "name": what[1], "topology": topology, "fits": "error",
             "error": f"no result within --timeout {args.timeout:.0f} s"}
    except RuntimeError as e:
      text = str(e)
      exit_code = re.search(r"exit (-?\d+)", text)
      killed = exit_code and exit_code.group(1) == "-9"
      lines = [line for line in text.strip().splitlines() if line.strip()]
      row = {"program": program, "name": what[1], "topology": topology, "fits": "error",
             "error": "killed (SIGKILL: out of host memory? a full-size compile needs 10-15+ GB)"
             if killed else (lines[-1][:300] if lines else "worker failed")}
    rows.append(row)
    print(json.dumps(row), file=sys.stderr, flush=True)
  print()
  print(f"Per-chip memory of vrt-jax programs compiled ahead of time by libtpu on "
        f"{common.machine_description(os.cpu_count() or 1)}:")
  print()
  common.print_table(rows, COLUMNS, None)
  if len(rows) == 1 and rows[0].get("roofline"):
    kind = rows[0]["topology"].split(":")[0]
    print(f"\nRoofline of {rows[0]['program']} {rows[0].get('name')} (benchmarks/roofline.py):\n")
    roofline.print_report(rows[0]["roofline"], [kind] + [c for c in roofline.CHIPS if c != kind]
                          if kind in roofline.CHIPS else list(roofline.CHIPS))
  for row in rows:
    if row.get("error"):
      print(f"\n{row['program']} {row.get('name')} on {row['topology']}: {row['error']}")
  print(f"\nReproduce: {common.reproduce_line()}")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(rows, f, indent=2)


if __name__ == "__main__":
  main()
