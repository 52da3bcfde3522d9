"""Exports a model's forward pass as StableHLO (`jax.export`), for serving or another runtime.

  vrt-export OUT --preset 006_VRT_videodeblurring_GoPro \
      --weights model_zoo/006_VRT_videodeblurring_GoPro.pth --shape 1,6,192,192
  vrt-export OUT --weights exported_params_dir --shape 1,6,64,64 --platforms cpu,cuda,tpu

The forward is lowered for one input shape (B, T, H, W, C): a tile, as tiled inference feeds it
(vrt_jax.inference pads and tiles a clip of any size to such tiles). OUT is a directory with:

  forward.jax_export   `jax.export.Exported.serialize()`: `load(OUT)` (or
                       `jax.export.deserialize`) gives a callable for any JAX of a compatible
                       calling convention, with no model code.
  forward.mlirbc       the same StableHLO module as portable bytecode (versioned StableHLO), for
                       runtimes outside JAX (IREE, PJRT plugins, XLA tools).
  export.json          input/output shape and dtype, preset, model kwargs, where the parameters
                       are, platforms, jax version.
  params.npz           only with --params argument: the parameters, one array per leaf, named by
                       their path, in the order the module takes them.

Parameters: `--params baked` (default) embeds the weights in the module as constants: the module
takes the clip alone, `forward(x)`. `--params argument` keeps them out: the module takes
`forward(params, x)` (in JAX, `params` is the nested dict of params.npz, see `load_params`; in
StableHLO, the leaves in params.npz's order, then x), so one module serves several fine-tunes of
the same architecture and the module file stays small.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vrt_jax import kernels, presets

FORWARD = "forward.jax_export"
BYTECODE = "forward.mlirbc"
SIDECAR = "export.json"
PARAMS = "params.npz"
PARAM_MODES = ("baked", "argument")


def model_from_args(*, preset: str | None, weights: str | None, config: str | None
                    ) -> tuple[Any, dict[str, Any], str | None]:
  """(model, model kwargs, preset): kwargs from --config, else --preset, else the
  `model_config.json` of an exported weights directory (the weights are loaded separately, with
  `checkpoint.load_params(weights, model)`)."""
  import vrt_jax
  from vrt_jax import checkpoint, restore_lib

  if config:
    cfg = restore_lib.load_config(config)
    kwargs, preset = cfg.model.to_dict(), preset or cfg.get("preset")
  elif preset:
    kwargs = presets.get_preset(preset)
  elif weights and os.path.isfile(os.path.join(weights, checkpoint.MODEL_CONFIG)):
    record = checkpoint.read_model_config(weights)
    kwargs, preset = record["model"], record["preset"]
  else:
    raise ValueError(f"{weights} does not say which model it holds: give --preset NAME (one of "
                     "the released models) or --config FILE")
  if not weights:
    raise ValueError("give --weights (an official .pth, an exported params directory or a "
                     "training workdir): an export without trained weights restores nothing")
  return vrt_jax.VRT(**kwargs), kwargs, preset


def input_shape(model: Any, shape: Sequence[int]) -> tuple[int, int, int, int, int]:
  """(B, T, H, W, C) from 4 or 5 ints (C defaults to the model's input channels, including the
  noise map of non-blind denoising); ValueError if the model cannot take it."""
  from vrt_jax import inference

  channels = inference.ModelSpec.from_model(model).in_channels
  if len(shape) == 4:
    shape = (*shape, channels)
  if len(shape) != 5 or min(shape) < 1:
    raise ValueError(f"--shape must be B,T,H,W (or B,T,H,W,C) positive integers; got {shape}")
  model.check_input(shape)
  return tuple(int(s) for s in shape)


def _leaf_name(path: tuple[Any, ...]) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def export_forward(model: Any, params: Any, shape: Sequence[int], *, params_mode: str = "baked",
                   platforms: Sequence[str] | None = None) -> jax.export.Exported:
  """`jax.export` of `model.apply` for float32 input of `shape` (B, T, H, W, C).

  params_mode "baked": `forward(x)` with `params` as constants; "argument": `forward(params, x)`.
  platforms: lowering platforms ("cpu", "cuda", "rocm", "tpu"; default: JAX's default backend).
  """
  if params_mode not in PARAM_MODES:
    raise ValueError(f"params mode must be one of {PARAM_MODES}; got {params_mode!r}")
  x = jax.ShapeDtypeStruct(tuple(shape), jnp.float32)
  kw = {} if platforms is None else {"platforms": tuple(platforms)}
  # The kernels of the platform named, or of each one at lowering when several are named.
  with (contextlib.nullcontext() if platforms is None else
        kernels.compiling_for(platforms[0] if len(platforms) == 1 else None)):
    if params_mode == "baked":
      constants = jax.tree_util.tree_map(jnp.asarray, params)
      return jax.export.export(jax.jit(lambda x: model.apply({"params": constants}, x)),
                               **kw)(x)
    abstract = jax.tree_util.tree_map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype), params)
    return jax.export.export(jax.jit(lambda p, x: model.apply({"params": p}, x)),
                             **kw)(abstract, x)


def write_export(out: str | os.PathLike, exported: jax.export.Exported, params: Any, *,
                 params_mode: str, preset: str | None, model_kwargs: dict[str, Any]
                 ) -> dict[str, Any]:
  """Writes OUT/forward.jax_export, forward.mlirbc, export.json (and params.npz for
  `params_mode` "argument"); returns the sidecar record."""
  out = Path(out)
  out.mkdir(parents=True, exist_ok=True)
  (out / FORWARD).write_bytes(exported.serialize())
  (out / BYTECODE).write_bytes(exported.mlir_module_serialized)
  record: dict[str, Any] = dict(
      input_shape=list(exported.in_avals[-1].shape), input_dtype=str(exported.in_avals[-1].dtype),
      input_layout="B,T,H,W,C float in [0, 1] (C: RGB, plus the noise map sigma/255 for "
                   "non-blind denoising)",
      output_shape=list(exported.out_avals[0].shape), output_dtype=str(exported.out_avals[0].dtype),
      preset=preset, model=json.loads(json.dumps(model_kwargs, default=_jsonable)),
      params=params_mode, platforms=list(exported.platforms), jax_version=jax.__version__,
      calling_convention_version=exported.calling_convention_version,
      files=dict(forward=FORWARD, stablehlo_bytecode=BYTECODE))
  if params_mode == "argument":
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    names = [_leaf_name(path) for path, _ in leaves]
    np.savez(out / PARAMS, **{name: np.asarray(leaf) for name, (_, leaf) in zip(
        names, leaves, strict=True)})
    record["files"]["params"] = PARAMS
    record["param_leaves"] = [dict(name=n, shape=list(np.shape(leaf)), dtype=str(leaf.dtype))
                              for n, (_, leaf) in zip(names, leaves, strict=True)]
  (out / SIDECAR).write_text(json.dumps(record, indent=2) + "\n")
  return record


def _jsonable(value: Any) -> Any:
  return value.tolist() if hasattr(value, "tolist") else str(value)


def load(out: str | os.PathLike) -> jax.export.Exported:
  """The exported forward of an OUT directory: `load(OUT).call(x)` (baked) or
  `load(OUT).call(load_params(OUT), x)` (argument)."""
  return jax.export.deserialize(bytearray((Path(out) / FORWARD).read_bytes()))


def load_params(out: str | os.PathLike) -> dict[str, Any]:
  """The params.npz of an OUT directory written with --params argument, as the nested dict the
  exported forward takes."""
  params: dict[str, Any] = {}
  with np.load(Path(out) / PARAMS) as arrays:
    for name in arrays.files:
      node = params
      *parents, leaf = name.split("/")
      for key in parents:
        node = node.setdefault(key, {})
      node[leaf] = arrays[name]
  return params


def _ints(text: str) -> tuple[int, ...]:
  try:
    return tuple(int(v) for v in text.split(","))
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected comma-separated integers; got {text}") from None


def main(argv: Sequence[str] | None = None) -> None:
  """The vrt-export command (returns None: a console script exits with main's return value)."""
  parser = argparse.ArgumentParser(
      prog="vrt-export", description=__doc__.split("\n\n")[0],
      epilog="OUT gets forward.jax_export, forward.mlirbc and export.json (see the module "
             "docstring of vrt_jax.export).")
  parser.add_argument("out", help="output directory")
  parser.add_argument("--preset", choices=sorted(presets.PRESETS), help="released model name")
  parser.add_argument("--weights", required=True,
                      help="official .pth, exported params directory (its model_config.json "
                           "names the model) or training workdir")
  parser.add_argument("--config", help="config file whose `model` replaces the preset's")
  parser.add_argument("--shape", type=_ints,
                      help="input tile B,T,H,W[,C] (default: batch 1 and the preset's "
                           "official test tile)")
  parser.add_argument("--params", choices=PARAM_MODES, default="baked",
                      help="baked: weights are constants of the module, forward(x); argument: "
                           "forward(params, x) with the weights in params.npz")
  parser.add_argument("--platforms", type=lambda s: s.split(","),
                      help="comma-separated lowering platforms: cpu, cuda, rocm, tpu (default: "
                           f"this machine's, {jax.default_backend()})")
  args = parser.parse_args(argv)
  from vrt_jax import checkpoint

  try:
    model, kwargs, preset = model_from_args(
        preset=args.preset, weights=args.weights, config=args.config)
    shape = args.shape
    if shape is None:
      tile = presets.TEST_SETTINGS.get(preset or "", {}).get("tile", (0, 0, 0))
      if not all(tile):
        raise ValueError("give the input tile with --shape B,T,H,W (this model has no "
                         "official test tile)")
      shape = (1, *tile)
    shape = input_shape(model, shape)  # Checked before the (slow) weights are loaded.
    params = checkpoint.load_params(args.weights, model)
    platforms = args.platforms and [p.strip().lower() for p in args.platforms]
    exported = export_forward(model, params, shape, params_mode=args.params,
                              platforms=platforms)
    record = write_export(args.out, exported, params, params_mode=args.params, preset=preset,
                          model_kwargs=kwargs)
  except ValueError as e:
    sys.exit(f"vrt-export: error: {e}")
  size = sum(f.stat().st_size for f in Path(args.out).iterdir()) / 2**20
  print(f"exported {preset or 'model'} forward {tuple(record['input_shape'])} -> "
        f"{tuple(record['output_shape'])} for {', '.join(record['platforms'])} "
        f"(params {args.params}) to {args.out} ({size:.1f} MiB)")


if __name__ == "__main__":
  main()
