"""Shared pieces of the benchmark scripts: worker subprocesses, parameters, the result table.

Every measurement runs in a fresh subprocess (one per measurement) so that its peak resident set
size is its own: the vrt-jax worker runs under this interpreter, the PyTorch reference worker under
the interpreter given by --ref_python with the reference imported from --ref at run time (no
reference code lives in this repository). Both are pinned to the same CPUs and thread count.

This module imports neither jax nor torch at import time: the reference worker runs in a
different virtual environment.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

RESULT_TAG = "BENCH_RESULT "


def parse_shape(text: str) -> tuple[int, ...]:
  """'1,6,64,64,3' -> (1, 6, 64, 64, 3): (B, T, H, W, C), channels-last."""
  shape = tuple(int(s) for s in text.split(","))
  if len(shape) != 5:
    raise ValueError(f"--shape must be B,T,H,W,C (5 integers), got {text!r}")
  return shape


def pin_threads(threads: int) -> None:
  """Restricts this process to the first `threads` CPUs (before jax / torch start their pools).

  XLA's CPU backend sizes its thread pool from the CPUs the process may run on, so CPU affinity is
  how both frameworks get the same number of threads; torch additionally gets set_num_threads.
  """
  if threads <= 0:
    return
  cpus = sorted(os.sched_getaffinity(0))
  if threads > len(cpus):
    raise ValueError(f"--threads {threads} > the {len(cpus)} CPUs available")
  os.sched_setaffinity(0, cpus[:threads])
  for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[var] = str(threads)


def peak_rss_mib() -> float:
  """Peak resident set size of this process so far, in MiB (Linux ru_maxrss is in KiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def time_calls(fn: Callable[[], Any], runs: int) -> tuple[float, list[float]]:
  """Calls fn once (first call: compile + run), then `runs` times; returns (first, steady list)."""
  t0 = time.perf_counter()
  fn()
  first = time.perf_counter() - t0
  steady = []
  for _ in range(runs):
    t0 = time.perf_counter()
    fn()
    steady.append(time.perf_counter() - t0)
  return first, steady


def emit(result: dict[str, Any]) -> None:
  """Prints a worker's result as one tagged JSON line for the parent to pick up."""
  result = dict(result, peak_rss_mib=peak_rss_mib())
  print(RESULT_TAG + json.dumps(result), flush=True)


def run_worker(cmd: Sequence[str], timeout: float | None = None,
               env: dict[str, str] | None = None) -> dict[str, Any]:
  """Runs one measurement subprocess and returns its tagged result (raises with its log)."""
  proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, env=env)
  for line in proc.stdout.splitlines():
    if line.startswith(RESULT_TAG):
      return json.loads(line[len(RESULT_TAG):])
  raise RuntimeError(f"benchmark worker failed (exit {proc.returncode}): {shlex.join(cmd)}\n"
                     f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")


def machine_description(threads: int) -> str:
  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          cpu = line.split(":", 1)[1].strip()
          break
  except OSError:
    pass
  load = os.getloadavg()
  return (f"{cpu}, {os.cpu_count()} CPUs, {threads} threads used; load average before the run "
          f"{load[0]:.2f}")


def median(xs: Sequence[float]) -> float:
  return statistics.median(xs)


def print_table(rows: list[dict[str, Any]], columns: Sequence[tuple[str, str, str]],
                ref_row: dict[str, Any] | None) -> None:
  """Markdown table; with a reference row, ratio rows (ours / reference) for each timing column.

  columns: (key, header, format) triples.
  """
  print("| " + " | ".join(h for _, h, _ in columns) + " |")
  print("|" + "---|" * len(columns))
  for row in rows:
    cells = []
    for key, _, fmt in columns:
      v = row.get(key)
      cells.append("-" if v is None else (fmt.format(v) if fmt else str(v)))
    print("| " + " | ".join(cells) + " |")
  if ref_row is None:
    return
  for row in rows:
    if row is ref_row:
      continue
    cells = []
    for key, _, fmt in columns:
      a, b = row.get(key), ref_row.get(key)
      if key == "impl":
        cells.append(f"ratio {row['impl']} / {ref_row['impl']}")
      elif isinstance(a, float) and isinstance(b, float) and b > 0 and fmt:
        cells.append(f"{a / b:.2f}x")
      else:
        cells.append("")
    print("| " + " | ".join(cells) + " |")


def reproduce_line() -> str:
  return "python " + shlex.join(sys.argv)


def torch_reference_model(ref: str, kwargs: dict[str, Any]) -> Any:
  """The official PyTorch VRT built from `ref`/models/network_vrt.py (imported at run time)."""
  sys.path.insert(0, os.path.abspath(ref))
  import warnings

  warnings.filterwarnings("ignore")
  from models.network_vrt import VRT  # noqa: PLC0415 (the reference checkout, not this repo)

  return VRT(**kwargs)


def preset_kwargs(name: str) -> dict[str, Any]:
  """VRT kwargs of an official model name, or of `tiny` (vrt_jax.presets.tiny: a smoke test)."""
  from vrt_jax import presets

  return presets.tiny() if name == "tiny" else presets.get_preset(name)


def add_arguments(parser: Any, preset: str) -> None:
  """The options both benchmark scripts share (the worker ones hidden)."""
  parser.add_argument("--preset", default=preset,
                      help="official model name (vrt_jax.presets.PRESETS) or tiny; comma-separated "
                           "list ok")
  parser.add_argument("--shape", default="1,6,64,64,3", help="input B,T,H,W,C (channels-last)")
  parser.add_argument("--runs", type=int, default=3, help="timed calls after the first (>= 3)")
  parser.add_argument("--threads", type=int, default=2, help="CPUs / threads for both (0: all)")
  parser.add_argument("--dtype", default="float32",
                      help="vrt-jax compute dtype(s), comma-separated (float32, bfloat16)")
  parser.add_argument("--ref", default="", help="official VRT checkout (models/network_vrt.py)")
  parser.add_argument("--ref_python", default="/work/tvenv/bin/python",
                      help="interpreter with torch + torchvision + einops for the reference")
  parser.add_argument("--skip_jax", action="store_true", help="only measure the reference")
  parser.add_argument("--no_huge_pages", action="store_true",
                      help="vrt-jax: keep glibc's default malloc instead of the huge pages that "
                           "train.py, eval.py and restore ask for (vrt_jax.runtime.huge_pages_env)")
  parser.add_argument("--scan_blocks", choices=("default", "on", "off"), default="default",
                      help="vrt-jax: run each group's TMSA blocks as an nn.scan over block pairs "
                           "(VRT(scan_blocks=...)), or not; default: the preset's setting")
  parser.add_argument("--worker", choices=("jax", "torch"), help=argparse.SUPPRESS)
  parser.add_argument("--kwargs", default="{}", help=argparse.SUPPRESS)


def jax_model_kwargs(args: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
  """`kwargs` with the vrt-jax-only options of the command line applied."""
  if args.scan_blocks != "default":
    kwargs = {**kwargs, "scan_blocks": args.scan_blocks == "on"}
  return kwargs


def timing(impl: str, args: Any, first: float, steady: list[float]) -> dict[str, Any]:
  """A worker's result row; on an accelerator with memory stats, its peak device memory too."""
  result = dict(impl=impl, preset=args.preset, shape=args.shape, dtype=args.dtype, first_s=first,
                median_s=median(steady), min_s=min(steady), runs=steady)
  if impl.startswith("vrt-jax"):
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
      result["device_peak_mib"] = stats["peak_bytes_in_use"] / 2**20
  return result


def time_and_emit(impl: str, args: Any, fn: Callable[[], Any]) -> None:
  """A worker's whole job once its model is built: time `fn` (`time_calls`) and emit the row."""
  first, steady = time_calls(fn, args.runs)
  emit(timing(impl, args, first, steady))


def run_named_worker(args: Any, **workers: Callable[[Any], None]) -> bool:
  """Runs the worker that `--worker` names (jax=..., torch=...); False in the parent process."""
  if not args.worker:
    return False
  workers[args.worker](args)
  return True


def compare(args: Any, script: str, columns: Sequence[tuple[str, str, str]], what: str,
            base: Sequence[str], jax_extra: Sequence[str] = (),
            ref_overrides: dict[str, Any] | None = None) -> None:
  """The parent process: per preset, one worker per vrt-jax dtype and one for the reference
  (when --ref is given), then the table with ours / reference ratios and the command line."""
  if args.runs < 1:
    raise ValueError(f"--runs must be >= 1, got {args.runs}")
  from vrt_jax import runtime  # This parent runs under the vrt-jax interpreter.

  # The jax worker runs with the malloc settings the entry points give themselves.
  jax_env = runtime.huge_pages_env(
      dict(os.environ, **({runtime.KEEP_MALLOC_ENV: "1"} if args.no_huge_pages else {})))
  print(f"# machine: {machine_description(args.threads)}", flush=True)
  base = ["--shape", args.shape, "--runs", str(args.runs), "--threads", str(args.threads),
          "--scan_blocks", args.scan_blocks, *base]
  rows = []
  for preset in args.preset.split(","):
    ref_row = None
    if not args.skip_jax:
      for dtype in args.dtype.split(","):
        print(f"# vrt-jax {what} {preset} {dtype} ...", flush=True)
        rows.append(run_worker([sys.executable, script, "--worker", "jax", "--preset", preset,
                                "--dtype", dtype, *base, *jax_extra], env=jax_env))
    if args.ref:
      print(f"# PyTorch reference {what} {preset} ...", flush=True)
      kwargs = json.dumps({**preset_kwargs(preset), **(ref_overrides or {})})
      ref_row = run_worker([args.ref_python, script, "--worker", "torch", "--preset", preset,
                            "--ref", args.ref, "--kwargs", kwargs, *base])
      rows.append(ref_row)
    print()
    print_table([r for r in rows if r["preset"] == preset], columns, ref_row)
    print()
  print(f"reproduce: {reproduce_line()}")
