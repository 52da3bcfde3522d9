"""Loading the reference's golden tensors (tests/data) into vrt-jax layouts."""

from __future__ import annotations

import functools
import json
import pathlib

import numpy as np

DATA = pathlib.Path(__file__).parent / "data"


@functools.cache
def load(name: str) -> dict[str, np.ndarray]:
  with np.load(DATA / f"{name}.npz") as z:
    return {k: z[k] for k in z.files}


def config(name: str) -> dict:
  return json.loads(str(load(name)["config"]))


def state_dict(name: str) -> dict[str, np.ndarray]:
  """PyTorch state_dict of a golden file; files without SpyNet share the parity file's."""
  z = load(name)
  sd = {k[len("param/"):]: v for k, v in z.items() if k.startswith("param/")}
  if cfg_pa(name) and not any(k.startswith("spynet.") for k in sd):
    shared = load("parity_deblur")
    sd.update({k[len("param/"):]: v for k, v in shared.items() if k.startswith("param/spynet.")})
  return sd


def cfg_pa(name: str) -> int:
  return config(name).get("pa_frames", 2)


def params_only(sd: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Drops the reference's buffers (the trimmed files keep only a few of them)."""
  buffers = ("relative_position_index", "position_bias", "spynet.mean", "spynet.std")
  return {k: v for k, v in sd.items() if not k.endswith(buffers)}


def clip(a: np.ndarray) -> np.ndarray:
  """(B, T, C, H, W) -> (B, T, H, W, C)."""
  return np.ascontiguousarray(a.transpose(0, 1, 3, 4, 2))


def feat(a: np.ndarray) -> np.ndarray:
  """(B, C, T, H, W) -> (B, T, H, W, C)."""
  return np.ascontiguousarray(a.transpose(0, 2, 3, 4, 1))


def image(a: np.ndarray) -> np.ndarray:
  """(N, C, H, W) -> (N, H, W, C)."""
  return np.ascontiguousarray(a.transpose(0, 2, 3, 1))


def assert_close_but_a_few(got, want, atol: float, err_msg: str = "", few: float = 0.005,
                           factor: float = 4.0) -> None:
  """assert_allclose(got, want, atol, rtol=0), except that a few entries (at most 4, or `few` of
  them) may miss by up to `factor` * atol.

  A float32 gradient reached through the parallel warping's floor and ceil, or summed in another
  order (another CPU's vector width, another kernel path), misses its float64 value by a few
  times the usual rounding in a handful of entries; a wrong gradient misses in many entries, or
  by far more.
  """
  got, want = np.asarray(got), np.asarray(want)
  outliers = int(np.sum(np.abs(got - want) > atol))
  if outliers <= max(4, few * want.size):
    atol *= factor
  np.testing.assert_allclose(got, want, atol=atol, rtol=0, err_msg=err_msg)
