"""Flow-guided modulated deformable convolution (DCNv2; VRT's parallel warping alignment).

Channels-last. The offset layout follows torchvision's `deform_conv2d`: channel
g * 18 + 2 * k + {0: dy, 1: dx} for deformable group g and kernel point k = ki * 3 + kj; the mask
channel is g * 9 + k.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vrt_jax.spynet import torch_conv_init


def modulated_deform_conv(x: jax.Array, offset: jax.Array, mask: jax.Array, kernel: jax.Array,
                          bias: jax.Array | None, deformable_groups: int) -> jax.Array:
  """3x3 modulated deformable convolution, stride 1, padding 1, dilation 1.

  x: (N, H, W, Cin); offset: (N, H, W, dg * 18); mask: (N, H, W, dg * 9);
  kernel: (3, 3, Cin / groups, Cout), the number of groups being Cin / kernel.shape[2]
  -> (N, H, W, Cout). Bilinear taps outside the image are zero.
  """
  n, h, w, cin = x.shape
  dg = deformable_groups
  cpg = cin // dg
  off = offset.reshape(n, h, w, dg, 9, 2)
  ky, kx = np.meshgrid(np.arange(3) - 1, np.arange(3) - 1, indexing="ij")
  base_y = np.arange(h, dtype=np.float32)[:, None, None, None] + ky.reshape(-1)  # (H, 1, 1, 9)
  base_x = np.arange(w, dtype=np.float32)[None, :, None, None] + kx.reshape(-1)  # (1, W, 1, 9)
  py = base_y + off[..., 0]  # (N, H, W, dg, 9)
  px = base_x + off[..., 1]
  m = mask.reshape(n, h, w, dg, 9)

  y0 = jnp.floor(py)
  x0 = jnp.floor(px)
  wy1, wx1 = py - y0, px - x0
  wy0, wx0 = 1 - wy1, 1 - wx1
  y0 = y0.astype(jnp.int32)
  x0 = x0.astype(jnp.int32)
  # Gather per (sample, deformable group): source (HW, cpg), indices (H * W * 9,).
  src = x.reshape(n, h * w, dg, cpg).transpose(0, 2, 1, 3)
  gather = jax.vmap(jax.vmap(lambda f, i: f[i]))
  cols = 0.
  for dy, dx, wgt in ((0, 0, wy0 * wx0), (0, 1, wy0 * wx1), (1, 0, wy1 * wx0), (1, 1, wy1 * wx1)):
    yi, xi = y0 + dy, x0 + dx
    valid = (yi >= 0) & (yi < h) & (xi >= 0) & (xi < w)
    idx = jnp.clip(yi, 0, h - 1) * w + jnp.clip(xi, 0, w - 1)  # (N, H, W, dg, 9)
    idx = idx.transpose(0, 3, 1, 2, 4).reshape(n, dg, -1)
    vals = gather(src, idx).reshape(n, dg, h, w, 9, cpg)
    coef = (jnp.where(valid, wgt, 0) * m).transpose(0, 3, 1, 2, 4)  # (N, dg, H, W, 9)
    cols = cols + vals * coef[..., None].astype(x.dtype)
  # (N, dg, H, W, 9, cpg) -> (N, H, W, 9, Cin), channels ordered as in x.
  cols = cols.transpose(0, 2, 3, 4, 1, 5).reshape(n, h, w, 9, cin)
  cin_g, cout = kernel.shape[2], kernel.shape[3]
  groups = cin // cin_g
  cols = cols.reshape(n, h, w, 9, groups, cin_g)
  k = kernel.reshape(9, cin_g, groups, cout // groups)
  out = jnp.einsum("nhwkgc,kcgo->nhwgo", cols, k).reshape(n, h, w, cout)
  return out if bias is None else out + bias


class DCNv2PackFlowGuided(nn.Module):
  """Flow-guided deformable alignment (BasicVSR++ style) used by VRT's parallel warping.

  The offset/mask head sees the flow-warped neighbours, the current frame and the flows; offsets
  are a bounded residual (max_residue_magnitude * tanh) on top of the flows. For pa_frames 4/6 the
  neighbours are stacked along channels and the convolution is grouped, one group per neighbour.

  x: (N, H, W, (pa_frames / 2) * C) neighbours; x_flow_warpeds: pa_frames / 2 arrays (N, H, W, C);
  x_current: (N, H, W, C); flows: pa_frames / 2 arrays (N, H, W, 2) -> (N, H, W, C).
  """
  features: int
  deformable_groups: int
  max_residue_magnitude: float = 10.
  pa_frames: int = 2

  @nn.compact
  def __call__(self, x: jax.Array, x_flow_warpeds: Sequence[jax.Array], x_current: jax.Array,
               flows: Sequence[jax.Array]) -> jax.Array:
    c = self.features
    dg = self.deformable_groups
    h = jnp.concatenate([*x_flow_warpeds, x_current, *flows], axis=-1)
    for i in range(3):
      h = nn.Conv(c, (3, 3), padding=1, kernel_init=torch_conv_init(),
                  name=f"conv_offset_{2 * i}")(h)
      h = nn.leaky_relu(h, 0.1)
    h = nn.Conv(27 * dg, (3, 3), padding=1, kernel_init=nn.initializers.zeros,
                name="conv_offset_6")(h)
    o1, o2, m = jnp.split(h, 3, axis=-1)
    offset = self.max_residue_magnitude * jnp.tanh(jnp.concatenate([o1, o2], axis=-1))
    parts = jnp.split(offset, len(flows), axis=-1)
    # Each neighbour's share of the offsets is a residual on its own flow, as (dy, dx) pairs.
    offset = jnp.concatenate(
        [p + jnp.tile(f[..., ::-1], (1, 1, 1, p.shape[-1] // 2)) for p, f in zip(parts, flows,
                                                                              strict=True)],
        axis=-1)
    mask = jax.nn.sigmoid(m)

    bound = 1. / np.sqrt(c * 9)
    def init(key, shape, dtype=jnp.float32):  # The reference's U(-1/sqrt(9C), 1/sqrt(9C)).
      return jax.random.uniform(key, shape, dtype, -bound, bound)

    kernel = self.param("kernel", init, (3, 3, c, c))
    bias = self.param("bias", nn.initializers.zeros, (c,))
    return modulated_deform_conv(x, offset, mask, kernel, bias, dg)
