"""SpyNet optical flow (Ranjan & Black, 2017) as used by VRT: flows at scales 1, 2, 4, 8."""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vrt_jax.layers import Conv
from vrt_jax.warp import flow_warp, resize_bilinear

# ImageNet statistics; buffers `spynet.mean` / `spynet.std` of the reference.
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def torch_conv_init() -> nn.initializers.Initializer:
  """PyTorch's default Conv/Linear weight init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  return nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")


class BasicModule(nn.Module):
  """One pyramid level of SpyNet: five 7x7 convs 8 -> 32 -> 64 -> 32 -> 16 -> 2.

  x: (N, H, W, 8) = [reference, warped support, upsampled flow] -> flow residual (N, H, W, 2).
  """

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    features = (32, 64, 32, 16, 2)
    for i, f in enumerate(features):
      x = Conv(f, (7, 7), padding=3, kernel_init=torch_conv_init(),
               name=f"basic_module_{2 * i}")(x)
      if i < len(features) - 1:
        x = nn.relu(x)
    return x


def _avg_pool2(x: jax.Array) -> jax.Array:
  n, h, w, c = x.shape
  x = x[:, :h // 2 * 2, :w // 2 * 2]
  return x.reshape(n, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


class SpyNet(nn.Module):
  """SpyNet with six basic modules; flows are returned for `return_levels` (5 = full size).

  ref, supp: (N, H, W, 3) in [0, 1] -> list of flows (N, H/s, W/s, 2), finest first, that warp
  `supp` onto `ref`.
  """
  return_levels: Sequence[int] = (2, 3, 4, 5)

  @nn.compact
  def __call__(self, ref: jax.Array, supp: jax.Array) -> list[jax.Array]:
    if ref.shape != supp.shape:
      raise ValueError(f"SpyNet needs equal shapes, got {ref.shape} and {supp.shape}")
    _, h, w, _ = ref.shape
    # The pyramid has five 2x poolings: work at the next multiple of 32.
    h_floor = math.ceil(h / 32) * 32
    w_floor = math.ceil(w / 32) * 32
    ref = resize_bilinear(ref, (h_floor, w_floor))
    supp = resize_bilinear(supp, (h_floor, w_floor))

    ref = [(ref - IMAGENET_MEAN) / IMAGENET_STD]
    supp = [(supp - IMAGENET_MEAN) / IMAGENET_STD]
    for _ in range(5):
      ref.insert(0, _avg_pool2(ref[0]))
      supp.insert(0, _avg_pool2(supp[0]))

    n, hc, wc, _ = ref[0].shape
    flow = jnp.zeros((n, hc // 2, wc // 2, 2), ref[0].dtype)
    flows = []
    for level in range(len(ref)):
      _, fh, fw, _ = flow.shape
      up = resize_bilinear(flow, (2 * fh, 2 * fw), align_corners=True) * 2.0
      _, rh, rw, _ = ref[level].shape
      if up.shape[1] != rh:
        up = jnp.pad(up, ((0, 0), (0, 1), (0, 0), (0, 0)), mode="edge")
      if up.shape[2] != rw:
        up = jnp.pad(up, ((0, 0), (0, 0), (0, 1), (0, 0)), mode="edge")
      warped = flow_warp(supp[level], up, padding_mode="border")
      flow = BasicModule(name=f"basic_module_{level}")(
          jnp.concatenate([ref[level], warped, up], axis=-1)) + up

      if level in self.return_levels:
        scale = 2 ** (5 - level)
        out = resize_bilinear(flow, (h // scale, w // scale))
        factor = np.array([(w // scale) / (w_floor // scale), (h // scale) / (h_floor // scale)],
                          np.float32)
        flows.insert(0, out * factor)
    return flows
