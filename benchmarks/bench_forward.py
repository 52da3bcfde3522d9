"""Forward (inference) speed and peak memory of vrt-jax, optionally against the PyTorch reference.

  python benchmarks/bench_forward.py --preset 001_VRT_videosr_bi_REDS_6frames \
      --shape 1,6,64,64,3 --threads 2 --runs 3 \
      --ref /tmp/ref --ref_python /work/tvenv/bin/python

Each measurement runs in its own subprocess (peak RSS is per process), all in this one
invocation so the ratio is taken on the same machine state. Columns: first call (vrt-jax: trace +
compile + one run; PyTorch: the first eager run), the median and min of `--runs` further calls, and
the process's peak resident set size (host memory, including the framework and the weights).
vrt-jax runs through `vrt_jax.inference.make_apply_fn`, as restore and eval do: compiled ahead of
time, then the compiler's freed heap returned to the OS (`--plain_jit` times `jax.jit` alone), and
with glibc's malloc on transparent huge pages as those entry points set it (`--no_huge_pages` to
compare without). The
reference is imported from `--ref` (a checkout of the official VRT with models/network_vrt.py) at
run time and runs under `torch.no_grad()` in eval mode with torch.set_num_threads(--threads).
Weights are random (timing does not depend on them). On GPU the JAX worker also reports the
device's peak memory.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import _common as common  # noqa: E402

COLUMNS = (("impl", "implementation", ""), ("preset", "preset", ""), ("shape", "input", ""),
           ("dtype", "dtype", ""), ("first_s", "first call (s)", "{:.1f}"),
           ("median_s", "median (s)", "{:.2f}"), ("min_s", "min (s)", "{:.2f}"),
           ("peak_rss_mib", "peak RSS (MiB)", "{:.0f}"),
           ("device_peak_mib", "device peak (MiB)", "{:.0f}"))


def jax_worker(args: argparse.Namespace) -> None:
  common.pin_threads(args.threads)
  import jax
  import jax.numpy as jnp
  import numpy as np

  import vrt_jax
  from vrt_jax import checkpoint, inference

  shape = common.parse_shape(args.shape)
  kwargs = common.jax_model_kwargs(args, common.preset_kwargs(args.preset))
  if args.dtype != "float32":
    kwargs["dtype"] = jnp.dtype(args.dtype)
  model = vrt_jax.VRT(**kwargs)
  x = jnp.asarray(np.random.default_rng(0).random(shape, np.float32))
  variables = jax.device_put({"params": checkpoint.random_params(model)})
  if args.plain_jit:
    fn = jax.jit(lambda v, x: model.apply(v, x))
  else:  # What restore / eval use: compiled ahead of time, then the compiler's heap released.
    fn = inference.make_apply_fn(model)
  impl = (f"vrt-jax ({jax.default_backend()}{', plain jit' if args.plain_jit else ''}"
          f"{', scanned blocks' if model.scan_blocks else ''})")
  common.time_and_emit(impl, args, lambda: jax.block_until_ready(fn(variables, x)))


def torch_worker(args: argparse.Namespace) -> None:
  common.pin_threads(args.threads)

  import torch

  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  kwargs = json.loads(args.kwargs)
  torch.set_num_threads(args.threads)
  torch.manual_seed(0)
  model = common.torch_reference_model(args.ref, kwargs).eval()
  b, t, h, w, c = common.parse_shape(args.shape)
  x = torch.rand(b, t, c, h, w)

  def call():
    with torch.no_grad():
      model(x)

  common.time_and_emit(f"PyTorch reference (torch {torch.__version__})", args, call)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  common.add_arguments(parser, preset="001_VRT_videosr_bi_REDS_6frames")
  parser.add_argument("--plain_jit", action="store_true",
                      help="vrt-jax: time jax.jit(model.apply) instead of "
                           "vrt_jax.inference.make_apply_fn (no heap release after compiling)")
  args = parser.parse_args()
  if common.run_named_worker(args, jax=jax_worker, torch=torch_worker):
    return
  common.compare(args, os.path.abspath(__file__), COLUMNS, "forward", base=[],
                 jax_extra=["--plain_jit"] if args.plain_jit else [])


if __name__ == "__main__":
  main()
