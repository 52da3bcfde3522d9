"""Official PyTorch VRT checkpoints -> vrt-jax variables, without PyTorch.

`load_torch_checkpoint` reads a `.pth` (the zip format of torch.save: a pickle plus raw tensor
storages) with a restricted unpickler that only rebuilds tensors; anything else in the pickle is
refused, since a checkpoint from the internet is untrusted input. `from_torch` maps PyTorch names
and layouts onto the Flax parameter tree of a `VRT`, strictly.

The command line, vrt-convert CHECKPOINT.pth [--preset NAME] --out DIR (or python -m
vrt_jax.convert), lives in vrt_jax/_convert_main.py: it writes with the checkpoint module, which
itself reads `.pth` files through this one, so conversion never imports checkpoint.
"""

from __future__ import annotations

import collections
import io
import pickle
import re
import zipfile
from collections.abc import Mapping
from typing import Any

import numpy as np
from flax import traverse_util

from vrt_jax import attention, spynet, tmsa
from vrt_jax.shapes import abstract_params, example_input_shape, param_count
from vrt_jax.vrt import VRT

__all__ = ["abstract_params", "example_input_shape", "expected_buffers", "from_torch",
           "load_torch_checkpoint", "param_count", "torch_name"]

_STORAGE_DTYPES = {
    "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16,
    "BFloat16Storage": None, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}
_TORCH_DTYPES = {
    "float64": np.float64, "float32": np.float32, "float16": np.float16, "bfloat16": None,
    "int64": np.int64, "int32": np.int32, "int16": np.int16, "int8": np.int8, "uint8": np.uint8,
    "bool": np.bool_,
}


class _StorageType:
  """Stands in for torch.<X>Storage / a torch dtype while unpickling: carries the element type."""

  def __init__(self, name: str, dtype):
    self.name, self.dtype = name, dtype


def _bfloat16_to_float32(raw: bytes) -> np.ndarray:
  bits = np.frombuffer(raw, np.uint16).astype(np.uint32) << 16
  return bits.view(np.float32)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
  del requires_grad, backward_hooks, metadata
  if not size:  # 0-d tensor
    return np.array(storage[storage_offset])
  itemsize = storage.dtype.itemsize
  view = np.lib.stride_tricks.as_strided(
      storage[storage_offset:], shape=tuple(size), strides=tuple(s * itemsize for s in stride))
  return np.array(view)  # Own the memory: the storage may be shared between tensors.


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
  del requires_grad, backward_hooks
  return data


class _RestrictedUnpickler(pickle.Unpickler):
  """Unpickles a torch.save pickle, resolving only what rebuilding tensors needs."""

  def __init__(self, file, archive: zipfile.ZipFile, prefix: str, byteorder: str):
    super().__init__(file)
    self._archive, self._prefix, self._byteorder = archive, prefix, byteorder
    self._storages: dict[str, np.ndarray] = {}

  def find_class(self, module: str, name: str):
    if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
      return _rebuild_tensor_v2
    if module == "torch._utils" and name == "_rebuild_parameter":
      return _rebuild_parameter
    if module == "collections" and name == "OrderedDict":
      return collections.OrderedDict
    if module == "torch" and name in _STORAGE_DTYPES:
      return _StorageType(name, _STORAGE_DTYPES[name])
    if module == "torch" and name in _TORCH_DTYPES:
      return _StorageType(name, _TORCH_DTYPES[name])
    raise pickle.UnpicklingError(
        f"refusing to unpickle '{module}.{name}': a checkpoint may only contain tensors and "
        "dicts of tensors; this file asks to run other code and is not loaded")

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
      raise pickle.UnpicklingError(f"unexpected persistent id in checkpoint: {pid!r}")
    _, storage_type, key, _location, _numel = pid[:5]
    if not isinstance(storage_type, _StorageType):
      raise pickle.UnpicklingError(f"unexpected storage type in checkpoint: {storage_type!r}")
    key = str(key)
    if key not in self._storages:
      try:
        raw = self._archive.read(f"{self._prefix}/data/{key}")
      except KeyError as e:
        raise ValueError(f"checkpoint is truncated: storage {key} is missing") from e
      if storage_type.dtype is None:  # bfloat16 has no numpy type: widen to float32.
        arr = _bfloat16_to_float32(raw)
      else:
        dt = np.dtype(storage_type.dtype).newbyteorder("<" if self._byteorder == "little" else ">")
        arr = np.frombuffer(raw, dt).astype(np.dtype(storage_type.dtype).newbyteorder("="))
      self._storages[key] = arr
    return self._storages[key]


def load_torch_checkpoint(path: str) -> dict[str, np.ndarray]:
  """Reads an official VRT `.pth` into {PyTorch name: array}, without PyTorch.

  Accepts a bare state_dict or {'params': state_dict}. Raises ValueError for files that are not
  torch zip checkpoints, and pickle.UnpicklingError for pickles that reference anything but
  tensors.
  """
  try:
    archive = zipfile.ZipFile(path)
  except zipfile.BadZipFile as e:
    raise ValueError(
        f"{path} is not a PyTorch zip checkpoint (torch.save since PyTorch 1.6). Legacy or "
        "corrupt files are not supported: re-save it with torch.save(obj, path) in a recent "
        "PyTorch, or check that the download is complete.") from e
  except FileNotFoundError as e:
    raise ValueError(f"checkpoint {path} does not exist") from e
  with archive:
    pkls = [n for n in archive.namelist() if n.endswith("/data.pkl")]
    if len(pkls) != 1:
      raise ValueError(f"{path} is a zip file but not a PyTorch checkpoint (no data.pkl inside)")
    prefix = pkls[0][:-len("/data.pkl")]
    byteorder = "little"
    if f"{prefix}/byteorder" in archive.namelist():
      byteorder = archive.read(f"{prefix}/byteorder").decode().strip()
    try:
      obj = _RestrictedUnpickler(io.BytesIO(archive.read(pkls[0])), archive, prefix,
                                 byteorder).load()
    except (EOFError, zipfile.BadZipFile) as e:
      raise ValueError(f"{path} is truncated or corrupt: {e}") from e
  if isinstance(obj, Mapping) and "params" in obj and isinstance(obj["params"], Mapping):
    obj = obj["params"]
  if not isinstance(obj, Mapping) or not all(isinstance(v, np.ndarray) for v in obj.values()):
    raise ValueError(f"{path} does not hold a state_dict (a mapping of names to tensors)")
  return {str(k): v for k, v in obj.items()}


def torch_name(flax_path: tuple[str, ...]) -> str:
  """('stage8_0_2', 'kernel') -> 'stage8.0.2.weight': Flax module names are PyTorch's, '.' -> '_'
  before indices."""
  parts = [re.sub(r"_(\d+)(?=_|$)", r".\1", p) for p in flax_path[:-1]]
  leaf = {"kernel": "weight", "scale": "weight"}.get(flax_path[-1], flax_path[-1])
  return ".".join(parts + [leaf])


def _to_flax_layout(value: np.ndarray, target_shape: tuple[int, ...], leaf: str) -> np.ndarray:
  if leaf == "kernel":
    if value.ndim == 2:  # Linear (out, in) -> (in, out)
      value = value.T
    elif value.ndim == 4:  # Conv2d (out, in, kh, kw) -> (kh, kw, in, out)
      value = value.transpose(2, 3, 1, 0)
    elif value.ndim == 5:  # Conv3d (out, in, 1, kh, kw) -> (kh, kw, in, out)
      value = value.transpose(2, 3, 4, 1, 0)
      if value.shape[0] == 1 and len(target_shape) == 4:
        value = value[0]
  return value


def expected_buffers(model: VRT) -> dict[str, np.ndarray]:
  """The reference's buffers for this configuration, by PyTorch name (constants in vrt-jax)."""
  ws = tuple(model.window_size)
  bufs: dict[str, np.ndarray] = {}
  for i in range(7):
    d1 = int(model.depths[i] * model.mul_attn_ratio)
    for b in range(d1):
      name = f"stage{i + 1}.residual_group1.blocks.{b}.attn"
      bufs[f"{name}.relative_position_index"] = attention.relative_position_index((2, *ws[1:]))
      bufs[f"{name}.position_bias"] = attention.sine_position_encoding(
          ws[1:], model.embed_dims[i] // 2)
    for b in range(model.depths[i] - d1):
      name = f"stage{i + 1}.residual_group2.blocks.{b}.attn"
      bufs[f"{name}.relative_position_index"] = attention.relative_position_index(ws)
  for i in range(7, len(model.depths)):
    window = (1, *ws[1:]) if i in model.indep_reconsts else ws
    for b in range(model.depths[i]):
      name = f"stage8.{i - 6}.residual_group.blocks.{b}.attn.relative_position_index"
      bufs[name] = attention.relative_position_index(window)
  if model.pa_frames:
    bufs["spynet.mean"] = spynet.IMAGENET_MEAN.reshape(1, 3, 1, 1)
    bufs["spynet.std"] = spynet.IMAGENET_STD.reshape(1, 3, 1, 1)
  return bufs


def from_torch(state_dict: Mapping[str, Any], model: VRT) -> dict[str, Any]:
  """Converts a PyTorch VRT state_dict to `{'params': ...}` for `model.apply`.

  Strict: missing or unexpected keys and shape mismatches raise a ValueError listing them; the
  reference's buffers (relative_position_index, position_bias, SpyNet mean/std) are accepted and
  checked against the model's constants.
  """
  sd = {k: np.asarray(v) for k, v in state_dict.items()}
  # PyTorch names one module per TMSA block: match them in the per-block layout.
  flat = traverse_util.flatten_dict(tmsa.unstack_blocks(abstract_params(model)))
  buffers = expected_buffers(model)
  names = {torch_name(path): path for path in flat}
  missing = sorted(set(names) - set(sd))
  unexpected = sorted(set(sd) - set(names) - set(buffers))
  problems = []
  if missing:
    problems.append(f"missing keys ({len(missing)}): {', '.join(missing[:20])}"
                    + (" ..." if len(missing) > 20 else ""))
  if unexpected:
    problems.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected[:20])}"
                    + (" ..." if len(unexpected) > 20 else ""))
  out = {}
  for name, path in names.items():
    if name not in sd:
      continue
    target = flat[path]
    value = _to_flax_layout(sd[name], target.shape, path[-1])
    if value.shape != target.shape:
      problems.append(f"{name}: checkpoint shape {sd[name].shape} does not fit the model's "
                      f"{target.shape} (after layout conversion {value.shape})")
      continue
    out[path] = value.astype(target.dtype)
  for name, expected in buffers.items():
    if name in sd:
      got = sd[name]
      same = got.shape == expected.shape and (
          np.array_equal(got, expected) if got.dtype.kind in "iu" else
          np.allclose(got, expected, atol=1e-5))
      if not same:
        problems.append(f"buffer {name} does not match this configuration (window size or "
                        "width differ from the checkpoint's)")
  if problems:
    raise ValueError("state_dict does not match the VRT configuration:\n  "
                     + "\n  ".join(problems))
  return {"params": tmsa.to_block_layout(traverse_util.unflatten_dict(out),
                                             getattr(model, "scan_blocks", False))}


if __name__ == "__main__":  # python -m vrt_jax.convert: the vrt-convert command
  from vrt_jax import _convert_main

  _convert_main.main()
