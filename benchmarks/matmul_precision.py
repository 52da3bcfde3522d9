"""PSNR of a trained VRT at each accelerator matmul precision, emulated on this CPU.

  python benchmarks/matmul_precision.py --workdir /tmp/vrt-demo [--kernels xla] [--json out.json]

On a TPU, a float32 matmul or convolution runs at the precision it names (`config.model.
matmul_precision`, vrt_jax.kernels.MATMUL_PRECISIONS): 'default' as one bfloat16 pass (both
operands rounded to bfloat16, products accumulated in float32), 'high' as three (bfloat16_3x:
each operand split into a bfloat16 high part and a bfloat16 remainder, hi*hi + hi*lo + lo*hi)
and 'highest' as six (float32 within rounding). XLA's CPU backend computes all three in float32,
so this script emulates them: it traces the model's forward at a setting, then evaluates the
traced program with every float32 matmul and convolution replaced by its emulation at the
precision that operation carries (the one-hot matmuls that stand in for exact gathers ask for
HIGHEST themselves and stay exact). It restores the run's validation clips from the workdir's
latest checkpoint (`pipeline.make_val_clips`: the same clips, tiling and 8-bit PSNR as
train.py's validation) at each setting and prints PSNR and SSIM, and the difference to
'highest'. `--kernels` picks the implementation (vrt_jax.kernels; `xla` is what a TPU runs).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import _common as common  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax.extend import core as jex  # noqa: E402

_MATMULS = ("dot_general", "conv_general_dilated")


def _bf16(x: jax.Array) -> jax.Array:
  return x.astype(jnp.bfloat16).astype(x.dtype)


def _emulated_matmul(eqn: Any, a: jax.Array, b: jax.Array) -> jax.Array:
  """The operation of `eqn` on (a, b) as a TPU computes it at the precision it carries."""
  params = dict(eqn.params, precision=jax.lax.Precision.HIGHEST)
  run = lambda x, y: eqn.primitive.bind(x, y, **params)  # noqa: E731
  precision = eqn.params["precision"]
  level = precision[0] if isinstance(precision, tuple) else precision
  if a.dtype != jnp.float32 or b.dtype != jnp.float32 or level == jax.lax.Precision.HIGHEST:
    return run(a, b)  # bfloat16 operands are exact in one pass; HIGHEST is float32.
  if level in (None, jax.lax.Precision.DEFAULT):
    return run(_bf16(a), _bf16(b))
  if level == jax.lax.Precision.HIGH:
    a_hi, b_hi = _bf16(a), _bf16(b)
    a_lo, b_lo = _bf16(a - a_hi), _bf16(b - b_hi)
    return run(a_hi, b_hi) + run(a_hi, b_lo) + run(a_lo, b_hi)
  raise NotImplementedError(f"{eqn.primitive.name} at precision {precision!r}")


def _eval(jaxpr: jex.Jaxpr, consts: Sequence[Any], *args: Any) -> list[Any]:
  """jax.core.eval_jaxpr with every matmul and convolution emulated (`_emulated_matmul`)."""
  env: dict[Any, Any] = {}
  read = lambda v: v.val if isinstance(v, jex.Literal) else env[v]  # noqa: E731
  env.update(zip(jaxpr.constvars, consts, strict=True))
  env.update(zip(jaxpr.invars, args, strict=True))
  for eqn in jaxpr.eqns:
    out = _eval_eqn(eqn, [read(v) for v in eqn.invars])
    env.update(zip(eqn.outvars, out if eqn.primitive.multiple_results else [out], strict=True))
  return [read(v) for v in jaxpr.outvars]


def _closed(closed: jex.ClosedJaxpr) -> Callable[..., list[Any]]:
  return lambda *args: _eval(closed.jaxpr, closed.consts, *args)


def _eval_eqn(eqn: Any, args: list[Any]) -> Any:
  name, p = eqn.primitive.name, eqn.params
  if name in _MATMULS:
    return _emulated_matmul(eqn, *args)
  if name in ("jit", "pjit", "closed_call", "custom_jvp_call", "custom_vjp_call",
              "custom_vjp_call_jaxpr"):
    # Forward only: a custom rule's primal function is what runs.
    inner = p.get("jaxpr") or p.get("call_jaxpr") or p.get("fun_jaxpr")
    return _closed(inner)(*args)
  if name in ("checkpoint", "remat", "remat2"):  # jax.checkpoint
    inner = p["jaxpr"]
    return (_closed(inner) if isinstance(inner, jex.ClosedJaxpr) else _closed(
        jex.ClosedJaxpr(inner, ())))(*args)
  if name == "scan":
    nc, ncarry = p["num_consts"], p["num_carry"]
    consts, init, xs = args[:nc], args[nc:nc + ncarry], args[nc + ncarry:]

    def body(carry, x):
      out = _closed(p["jaxpr"])(*consts, *carry, *x)
      return out[:ncarry], out[ncarry:]

    carry, ys = jax.lax.scan(body, init, xs, length=p["length"], reverse=p["reverse"])
    return [*carry, *ys]
  if name == "while":
    cn, bn = p["cond_nconsts"], p["body_nconsts"]
    cc, bc, init = args[:cn], args[cn:cn + bn], args[cn + bn:]
    return jax.lax.while_loop(lambda c: _closed(p["cond_jaxpr"])(*cc, *c)[0],
                              lambda c: _closed(p["body_jaxpr"])(*bc, *c), init)
  if name == "cond":
    return jax.lax.switch(args[0], [_closed(b) for b in p["branches"]], *args[1:])
  for value in p.values():
    for sub in value if isinstance(value, (tuple, list)) else (value,):
      if isinstance(sub, (jex.Jaxpr, jex.ClosedJaxpr)):
        raise NotImplementedError(f"cannot emulate inside {name}: add it to _eval_eqn")
  return eqn.primitive.bind(*args, **p)


def emulated(fn: Callable[..., Any]) -> Callable[..., Any]:
  """`fn` with its float32 matmuls and convolutions computed as a TPU computes them at the
  precision each carries (trace `fn` under `vrt_jax.kernels.matmul_precision` to set it)."""

  def run(*args: Any) -> Any:
    closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(*args)
    out = _eval(closed.jaxpr, closed.consts, *jax.tree.leaves(args))
    return jax.tree.unflatten(jax.tree.structure(out_shape), out)

  return run


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
  parser.add_argument("--workdir", required=True, help="a training workdir (config.json)")
  parser.add_argument("--kernels", choices=("cpu", "xla"), default="xla")
  parser.add_argument("--json", default="", help="also write the rows to this file")
  args = parser.parse_args()
  os.environ["VRT_JAX_KERNELS"] = args.kernels

  import ml_collections
  import numpy as np

  import vrt_jax
  from vrt_jax import checkpoint, inference, kernels, metrics, runtime
  from vrt_jax.data import pipeline

  config_path = os.path.join(args.workdir, "config.json")
  if not os.path.exists(config_path):
    sys.exit(f"error: {config_path} does not exist: --workdir must be a training workdir "
             "(python train.py --config configs/demo.py --workdir DIR)")
  with open(config_path) as f:
    config = ml_collections.ConfigDict(json.load(f))
  kwargs = config.model.to_dict()
  kwargs.pop("matmul_precision", None)  # The run's own; every setting is compared below.
  with runtime.quiet_logs_while():  # Orbax's INFO lines and a harmless warning.
    params = checkpoint.load_params(args.workdir, vrt_jax.VRT(**kwargs))
  clips = pipeline.make_val_clips(config.data, num_clips=config.data.val_clips,
                                  seed=config.seed + 1)
  rows = []
  for setting in kernels.MATMUL_PRECISIONS:
    model = vrt_jax.VRT(**kwargs, matmul_precision=setting)
    apply_fn = jax.jit(emulated(model.apply))
    psnr, ssim = [], []
    for clip in clips:
      out = inference.restore(model, {"params": params}, clip["lq"][None],
                              tile=tuple(config.eval.tile),
                              tile_overlap=tuple(config.eval.tile_overlap), apply_fn=apply_fn,
                              progress=False)[0]
      pairs = [(metrics.to_uint8(o), metrics.to_uint8(g))
               for o, g in zip(out, clip["gt"], strict=True)]
      psnr.append(float(np.mean([metrics.psnr(o, g) for o, g in pairs])))
      ssim.append(float(np.mean([metrics.ssim(o, g) for o, g in pairs])))
    rows.append(dict(matmul_precision=setting, psnr=float(np.mean(psnr)),
                     ssim=float(np.mean(ssim)), psnr_per_clip=psnr))
  highest = rows[-1]["psnr"]
  print(f"Held-out clips ({len(clips)}) of {args.workdir}, matmuls emulated as a TPU runs them "
        f"(kernels: {args.kernels}):")
  print("| matmul_precision | TPU passes | PSNR (dB) | SSIM | PSNR - highest (dB) |")
  print("|---|---|---|---|---|")
  for row, passes in zip(rows, ("1 (bfloat16)", "3 (bfloat16_3x)", "6 (float32)"), strict=True):
    print(f"| {row['matmul_precision']} | {passes} | {row['psnr']:.3f} | {row['ssim']:.4f} | "
          f"{row['psnr'] - highest:+.3f} |")
  print(f"Reproduce: {common.reproduce_line()}")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(rows, f, indent=2)


if __name__ == "__main__":
  main()
