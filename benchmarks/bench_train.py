"""Training-step speed and peak memory of vrt-jax, optionally against the PyTorch reference.

  python benchmarks/bench_train.py --preset 006_VRT_videodeblurring_GoPro \
      --shape 1,6,64,64,3 --threads 2 --runs 3 \
      --ref /tmp/ref --ref_python /work/tvenv/bin/python

One step = forward in training mode (stochastic depth on) + Charbonnier loss (KAIR's,
eps 1e-9) + backward + Adam update (lr 4e-4, betas (0.9, 0.99): optax.adam / torch.optim.Adam)
of all parameters. `--shape` is the low-quality input (B, T, H, W, C); the target is
upscale times larger. Each measurement runs in its own subprocess (peak RSS per process) in this
one invocation, pinned to the same CPUs and thread count. First call = vrt-jax trace + compile +
one step, or PyTorch's first eager step; then the median / min of `--runs` steps. vrt-jax steps
as train.py does: parameters and optimizer state donated to the step, glibc's malloc on
transparent huge pages (vrt_jax.runtime.huge_pages_env; `--no_huge_pages` to compare without).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import _common as common  # noqa: E402

COLUMNS = (("impl", "implementation", ""), ("preset", "preset", ""), ("shape", "input", ""),
           ("dtype", "dtype", ""), ("first_s", "first step (s)", "{:.1f}"),
           ("median_s", "median step (s)", "{:.2f}"), ("min_s", "min (s)", "{:.2f}"),
           ("peak_rss_mib", "peak RSS (MiB)", "{:.0f}"),
           ("device_peak_mib", "device peak (MiB)", "{:.0f}"))
LR, BETAS, EPS = 4e-4, (0.9, 0.99), 1e-9


def jax_worker(args: argparse.Namespace) -> None:
  common.pin_threads(args.threads)

  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax

  import vrt_jax
  from vrt_jax import checkpoint, train_step

  b, t, h, w, c = common.parse_shape(args.shape)
  kwargs = common.jax_model_kwargs(
      args, {**common.preset_kwargs(args.preset), **json.loads(args.overrides)})
  if args.dtype != "float32":
    kwargs["dtype"] = jnp.dtype(args.dtype)
  model = vrt_jax.VRT(**kwargs)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.random((b, t, h, w, c), np.float32))
  s = model.upscale
  gt = jnp.asarray(rng.random((b, t, s * h, s * w, model.out_chans), np.float32))
  params = jax.device_put(checkpoint.random_params(model))
  tx = optax.adam(LR, b1=BETAS[0], b2=BETAS[1])
  # The step train.py runs (vrt_jax.train_step), state donated as there.
  step = jax.jit(functools.partial(train_step.train_step, model=model, tx=tx,
                                   dropout_rng=jax.random.key(0), loss_eps=EPS),
                 donate_argnums=0)
  box = {"state": {"step": jnp.zeros([], jnp.int32), "params": params,
                   "opt_state": tx.init(params)}}
  batch = {"lq": x, "gt": gt}

  def call():
    box["state"], metrics = step(box["state"], batch)
    jax.block_until_ready(metrics["loss"])

  scan = ", scanned blocks" if model.scan_blocks else ""
  common.time_and_emit(f"vrt-jax ({jax.default_backend()}{scan})", args, call)


def torch_worker(args: argparse.Namespace) -> None:
  common.pin_threads(args.threads)

  import torch

  kwargs = json.loads(args.kwargs)
  torch.set_num_threads(args.threads)
  torch.manual_seed(0)
  model = common.torch_reference_model(args.ref, kwargs).train()
  b, t, h, w, c = common.parse_shape(args.shape)
  s = kwargs.get("upscale", 4)
  x = torch.rand(b, t, c, h, w)
  gt = torch.rand(b, t, kwargs.get("out_chans", 3), s * h, s * w)
  opt = torch.optim.Adam(model.parameters(), lr=LR, betas=BETAS)

  def call():
    opt.zero_grad(set_to_none=True)
    loss = torch.mean(torch.sqrt((model(x) - gt) ** 2 + EPS))
    loss.backward()
    opt.step()

  common.time_and_emit(f"PyTorch reference (torch {torch.__version__})", args, call)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  common.add_arguments(parser, preset="006_VRT_videodeblurring_GoPro")
  parser.add_argument("--overrides", default="{}",
                      help='VRT kwargs over the preset for both, e.g. '
                      '\'{"use_checkpoint_attn": true}\' (recompute attention in the backward)')
  args = parser.parse_args()
  if common.run_named_worker(args, jax=jax_worker, torch=torch_worker):
    return
  common.compare(args, os.path.abspath(__file__), COLUMNS, "train step",
                 base=["--overrides", args.overrides], ref_overrides=json.loads(args.overrides))


if __name__ == "__main__":
  main()
