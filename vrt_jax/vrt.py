"""VRT: the Video Restoration Transformer (Liang et al., 2022), channels-last.

The network: SpyNet flows -> nearest-neighbour image warping -> conv_first -> a U-shaped stack of
seven stages at scales 1, 2, 4, 8, 4, 2, 1 (each: TMSA groups, then parallel warping) -> stage 8
(residual TMSA groups at full size) -> a task head (x4 SR, deblurring/denoising, or frame
interpolation when pa_frames is 0).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vrt_jax import kernels, memory, spatial
from vrt_jax.deform import DCNv2PackFlowGuided
from vrt_jax.layers import Conv
from vrt_jax.spynet import SpyNet, torch_conv_init
from vrt_jax.tmsa import RTMSA, TMSAG, MlpGEGLU, dense, layer_norm
from vrt_jax.warp import flow_warp, nearest4_warp, resize_bilinear

SCALES = (1, 2, 4, 8, 4, 2, 1)
RESHAPES = ("none", "down", "down", "down", "up", "up", "up")
# Upper bound on the SR head's full-resolution activations held at once (bytes).
_HEAD_BYTES = 64 << 20


def conv_frames(x: jax.Array, features: int, kernel: int, name: str, padding: int | str = 1,
                kernel_init=None, dtype: Any = jnp.float32) -> jax.Array:
  """A per-frame 2-D convolution (the reference's Conv3d with kernel (1, k, k)).

  x: (B, T, H, W, C) -> (B, T, H, W, features).
  """
  b, t = x.shape[:2]
  conv = Conv(features, (kernel, kernel), padding=padding,
              kernel_init=kernel_init or torch_conv_init(), dtype=dtype, name=name)
  y = conv(x.reshape(b * t, *x.shape[2:]))
  return y.reshape(b, t, *y.shape[1:])


def pixel_shuffle(x: jax.Array, r: int) -> jax.Array:
  """PyTorch's PixelShuffle per frame, channels-last: (..., H, W, C r^2) -> (..., rH, rW, C)."""
  *lead, h, w, c = x.shape
  x = x.reshape(*lead, h, w, c // (r * r), r, r)
  n = len(lead)
  x = x.transpose(*range(n), n, n + 3, n + 1, n + 4, n + 2)
  return x.reshape(*lead, h * r, w * r, c // (r * r))


def flows_composed(flows: Sequence[jax.Array], flows2: Sequence[jax.Array], forward: bool,
                   step: int) -> list[jax.Array]:
  """Flows over `step + 1` frames by chaining: f(t -> t+k+1) = f_k + warp(f_1 at t+k, f_k).

  `flows` are the 1-frame flows (B, T-1, H, W, 2) per scale, `flows2` the `step`-frame ones
  (B, T-step, H, W, 2). Returns (B, T-step-1, H, W, 2) per scale, indexed like the reference.
  """
  out = []
  for f1, fk in zip(flows, flows2, strict=True):
    b, n, h, w, _ = fk.shape
    if forward:
      near, far = fk[:, 1:], f1[:, :n - 1]
    else:
      near, far = fk[:, :-1], f1[:, step:]
    warped = flow_warp(far.reshape(-1, h, w, 2), near.reshape(-1, h, w, 2))
    out.append(near + warped.reshape(near.shape))
  return out


# Bytes of the parallel warping's alignment per step (and device) when it is rematerialised.
_ALIGN_BYTES = 256 << 20


class Stage(nn.Module, kw_only=True):
  """One stage of the U-shaped stack: reshape, TMSA groups, parallel warping.

  x: (B, T, H, W, C) -> (B, T, H', W', dim) with H' = 2H ('up'), H/2 ('down') or H ('none').
  flows_backward / flows_forward: pa_frames / 2 arrays (B, T - k, H', W', 2), k = 1..pa_frames/2.
  """
  dim: int
  depth: int
  num_heads: int
  window_size: tuple[int, int, int]
  mul_attn_ratio: float = 0.75
  mlp_ratio: float = 2.
  qkv_bias: bool = True
  qk_scale: float | None = None
  drop_path: float | Sequence[float] = 0.
  pa_frames: int = 2
  deformable_groups: int = 16
  reshape: str = "none"
  max_residue_magnitude: float = 10.
  use_checkpoint_attn: bool = False
  dtype: Any = jnp.float32
  remat: str = "none"
  scan_blocks: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, flows_backward: Sequence[jax.Array],
               flows_forward: Sequence[jax.Array], train: bool = False) -> jax.Array:
    b, t, h, w, c = x.shape
    if self.reshape == "down":
      # 'n c d (h neih) (w neiw) -> n d h w (neiw neih c)'
      x = x.reshape(b, t, h // 2, 2, w // 2, 2, c).transpose(0, 1, 2, 4, 5, 3, 6)
      x = x.reshape(b, t, h // 2, w // 2, 4 * c)
    elif self.reshape == "up":
      # 'n (neiw neih c) d h w -> n d (h neih) (w neiw) c'
      x = x.reshape(b, t, h, w, 2, 2, c // 4).transpose(0, 1, 2, 5, 3, 4, 6)
      x = x.reshape(b, t, 2 * h, 2 * w, c // 4)
    x = layer_norm("reshape_1", self.dtype)(x)
    if self.reshape != "none":
      x = dense(self.dim, "reshape_2", self.dtype)(x)

    ws = tuple(self.window_size)
    depth1 = int(self.depth * self.mul_attn_ratio)
    rates = self.drop_path if isinstance(self.drop_path, float) else tuple(self.drop_path)
    group = functools.partial(
        TMSAG, dim=self.dim, num_heads=self.num_heads, mlp_ratio=self.mlp_ratio,
        qkv_bias=self.qkv_bias, qk_scale=self.qk_scale, drop_path=rates,
        use_checkpoint_attn=self.use_checkpoint_attn, dtype=self.dtype, remat=self.remat,
        scan=self.scan_blocks)
    y = group(depth=depth1, window_size=(2, ws[1], ws[2]), mut_attn=True,
              name="residual_group1")(x, train)
    x = dense(self.dim, "linear1", self.dtype)(y) + x
    # The reference always checkpoints the attention of this group. Here it follows
    # use_checkpoint_attn: recomputing it costs more time (its 3-D windows are the largest) than
    # it saves memory, once the feed-forward parts are recomputed (TMSA).
    y = group(depth=self.depth - depth1, window_size=ws, mut_attn=False,
              name="residual_group2")(x, train)
    x = dense(self.dim, "linear2", self.dtype)(y) + x

    if self.pa_frames:
      # Parallel warping at full resolution keeps more activations than the TMSA blocks (the
      # offset head's 27 * dg channels, the fusion's 3 * dim): it follows the blocks' remat
      # policy, keeping only x and the flows when that policy is 'full'.
      x = kernels.remat_part(Stage._parallel_warping, self.remat)(
          self, x, flows_backward, flows_forward)
    return x

  def _parallel_warping(self, x: jax.Array, flows_backward: Sequence[jax.Array],
                        flows_forward: Sequence[jax.Array]) -> jax.Array:
    x_backward, x_forward = parallel_warp(x, flows_backward, flows_forward,
                                          functools.partial(Stage._align, self))
    return MlpGEGLU(hidden_features=3 * self.dim, out_features=self.dim, dtype=self.dtype,
                    name="pa_fuse", parent=self)(
        jnp.concatenate([x, x_backward, x_forward], axis=-1))

  def _align(self, x: jax.Array, warped: Sequence[jax.Array], current: jax.Array,
             flows: Sequence[jax.Array]) -> jax.Array:
    """The flow-guided deformable alignment (pa_deform) of N frame pairs (N, H, W, ...).

    Under a remat policy, a few pairs per step (`nn.scan`, each step rematerialised): the
    offset head's 27 * dg channels and the sampling of every pair of a full-resolution stage
    at once were the training step's largest transients on a TPU.
    """
    def align(mdl, *args):
      return DCNv2PackFlowGuided(
          features=self.dim, deformable_groups=self.deformable_groups,
          max_residue_magnitude=self.max_residue_magnitude, pa_frames=self.pa_frames,
          dtype=self.dtype, name="pa_deform", parent=mdl)(*args)

    n, h, w, c = current.shape
    # Per pair: the offset head's output, offsets and mask, and the convolutions' activations,
    # each padded to 128 lanes as a TPU lays them out.
    lanes = lambda k: -(-k // 128) * 128  # noqa: E731
    item_bytes = h * w * 4 * (2 * lanes(27 * self.deformable_groups) + 6 * lanes(c))
    steps, to_steps, from_steps = spatial.block_steps(n, item_bytes, _ALIGN_BYTES)
    args = (x, warped, current, flows)
    if kernels.resolve_remat(self.remat) == "none" or steps == 1:
      return align(self, *args)

    def step(mdl, carry, xs):
      return carry, align(mdl, *xs)

    scan = nn.scan(kernels.remat_part(step, self.remat), variable_broadcast="params",
                   split_rngs={"params": False}, length=steps)
    _, out = scan(self, None, jax.tree.map(to_steps, args))
    return from_steps(out)


def min_hw(window_size: Sequence[int], pa_frames: int) -> tuple[int, int]:
  """The smallest H and W a VRT takes: multiples of 8 (and of the window) holding a whole
  window at scale 1/8 and, when it computes flows (pa_frames > 0), above 32: SpyNet works at
  the next multiple of 32 and pools it 5 times, and its coarsest flow (half the top level)
  needs a pixel."""
  sizes = []
  for wsi in window_size[1:]:
    step = math.lcm(8, wsi)
    least = 8 * wsi
    while pa_frames and least <= 32:
      least += step
    sizes.append(least)
  return sizes[0], sizes[1]


def parallel_warp(x: jax.Array, flows_backward: Sequence[jax.Array],
                  flows_forward: Sequence[jax.Array], pa_deform: Callable[..., jax.Array]
                  ) -> tuple[jax.Array, jax.Array]:
  """Parallel warping (VRT Sec. 3.3): align the next / previous pa_frames/2 frames to each frame.

  x: (B, T, H, W, C) -> backward-aligned and forward-aligned features, both (B, T, H, W, C); the
  last (resp. first) frame has no later (earlier) neighbours and gets zeros. Neighbours beyond the
  clip are zero frames with zero flow, as in the reference. All frames and both directions go
  through the deformable convolution in one batch.
  """
  b, t, h, w, c = x.shape
  num = len(flows_backward)

  def pad_frames(a, before, after):
    return jnp.pad(a, [(0, 0), (before, after)] + [(0, 0)] * (a.ndim - 2))

  # Backward: frame i gets frames i + k (k = 1..num) warped with flows_backward[k-1][:, i].
  nb_b = [pad_frames(x[:, k:], 0, k - 1) for k in range(1, num + 1)]
  fl_b = [pad_frames(f, 0, k - 1) for k, f in enumerate(flows_backward, start=1)]
  # Forward: frame i gets frames i - k warped with flows_forward[k-1][:, i - k].
  nb_f = [pad_frames(x[:, :t - k], k - 1, 0) for k in range(1, num + 1)]
  fl_f = [pad_frames(f, k - 1, 0) for k, f in enumerate(flows_forward, start=1)]

  nbrs = [both_directions(p, q) for p, q in zip(nb_b, nb_f, strict=True)]
  flows = [both_directions(p, q) for p, q in zip(fl_b, fl_f, strict=True)]
  current = both_directions(x[:, :-1], x[:, 1:])
  warped = [flow_warp(nb, fl) for nb, fl in zip(nbrs, flows, strict=True)]
  aligned = pa_deform(jnp.concatenate(nbrs, axis=-1), warped, current, flows)
  aligned = aligned.reshape(b, 2, t - 1, h, w, -1)
  zeros = jnp.zeros_like(aligned[:, 0, :1])
  x_backward = jnp.concatenate([aligned[:, 0], zeros], axis=1)
  x_forward = jnp.concatenate([zeros, aligned[:, 1]], axis=1)
  return x_backward, x_forward


def both_directions(backward: jax.Array, forward: jax.Array) -> jax.Array:
  """Two (B, T', ...) arrays as one batch (B * 2 * T', ...), clip by clip: each clip's part
  stays one block of the batch, so clips split over devices stay split (two (B * T')
  halves concatenated would interleave every device's clips with the others')."""
  both = jnp.stack([backward, forward], axis=1)
  return both.reshape(-1, *both.shape[3:])


class VRT(nn.Module):
  """Video Restoration Transformer. Fields are the official constructor's keyword arguments.

  x: (B, T, H, W, in_chans), plus one noise-map channel (sigma / 255) when nonblind_denoising,
  float32 in [0, 1] -> (B, T, upscale * H, upscale * W, out_chans); for frame interpolation
  (pa_frames 0) -> (B, out_chans / 3, H, W, 3). H and W must be multiples of 8 with
  H / 8 >= window_size[1] and W / 8 >= window_size[2] (mutual attention needs full windows at
  scale 8). `spynet_path` is accepted for compatibility and ignored: SpyNet weights come with the
  checkpoint (see vrt_jax.convert).
  """
  upscale: int = 4
  in_chans: int = 3
  out_chans: int = 3
  img_size: Sequence[int] = (6, 64, 64)
  window_size: Sequence[int] = (6, 8, 8)
  depths: Sequence[int] = (8, 8, 8, 8, 8, 8, 8, 4, 4, 4, 4, 4, 4)
  indep_reconsts: Sequence[int] = (11, 12)
  embed_dims: Sequence[int] = (120,) * 7 + (180,) * 6
  num_heads: Sequence[int] = (6,) * 13
  mul_attn_ratio: float = 0.75
  mlp_ratio: float = 2.
  qkv_bias: bool = True
  qk_scale: float | None = None
  drop_path_rate: float = 0.2
  spynet_path: str | None = None
  pa_frames: int = 2
  deformable_groups: int = 16
  recal_all_flows: bool = False
  nonblind_denoising: bool = False
  use_checkpoint_attn: bool = False
  # The feed-forward parts are always recomputed in the backward pass (TMSA):
  # use_checkpoint_ffn and no_checkpoint_ffn_blocks are accepted for the reference's signature
  # and change nothing.
  use_checkpoint_ffn: bool = False
  no_checkpoint_attn_blocks: Sequence[int] = ()
  no_checkpoint_ffn_blocks: Sequence[int] = ()
  # Compute dtype (e.g. jnp.bfloat16 on GPU/TPU). Parameters stay float32; SpyNet, flows, warp and
  # deformable sampling positions, LayerNorm statistics and softmax stay float32; output float32.
  dtype: Any = jnp.float32
  # Precision of float32 matmuls and convolutions on accelerators (kernels.MATMUL_PRECISIONS):
  # 'default' is one bfloat16 pass on a TPU; 'high' and 'highest' cost 3 and 6. No effect on CPU.
  matmul_precision: str = "default"
  # What each TMSA block keeps for the backward pass (kernels.REMAT_POLICIES): 'none' keeps
  # what autodiff keeps; 'full', 'dots', 'dots_no_batch' recompute the rest from the block's
  # input; 'auto' (the training configs' choice) is 'none' on CPU and 'full' on a TPU or GPU
  # (kernels.resolve_remat). Outputs and gradients are the same under every policy.
  remat: str = "none"
  # Run the TMSA blocks of each group as an nn.scan over (unshifted, shifted) pairs (TMSAG):
  # the same function, compiled once per group instead of once per block (006 train step on
  # CPU: compile overhead 335 -> 180 s, no slower, 8% less peak memory). Parameters are then
  # stacked (tmsa.stack_blocks); loading converts either layout to the model's.
  scan_blocks: bool = True

  def check_input(self, shape: Sequence[int]) -> None:
    """Raises ValueError unless a clip of this shape is a valid input."""
    expected_c = self.in_chans + (1 if self.nonblind_denoising and self.pa_frames else 0)
    layout = f"(B, T, H, W, {expected_c})"
    if len(shape) != 5:
      raise ValueError(f"VRT expects a clip of shape {layout}, got rank {len(shape)}: {shape}")
    _, t, h, w, c = shape
    if c != expected_c:
      extra = " (RGB + noise map sigma/255)" if self.nonblind_denoising else ""
      raise ValueError(f"VRT expects {expected_c} channels{extra}, shape {layout}; got {shape}")
    ws = self.window_size
    for name, n, wsi, least in zip("HW", (h, w), ws[1:], min_hw(ws, self.pa_frames),
                                   strict=True):
      if n % 8 or n < least:
        flows = " and above 32 for SpyNet's flow pyramid" if least > 8 * wsi else ""
        raise ValueError(
            f"{name}={n} is not supported: H and W must be multiples of 8 and at least "
            f"{least} (the {wsi}-pixel window at scale 8{flows}); pad or tile the clip "
            "(vrt_jax.inference.restore does both).")
    min_t = {0: 2, 2: 2, 4: 3, 6: 4}.get(self.pa_frames)
    if min_t is None:
      raise ValueError(f"pa_frames must be 0, 2, 4 or 6, got {self.pa_frames}")
    if self.pa_frames == 0 and t != self.img_size[0]:
      raise ValueError(f"Frame interpolation (pa_frames=0) needs exactly img_size[0]="
                       f"{self.img_size[0]} input frames, got T={t}")
    if t < min_t:
      raise ValueError(f"VRT with pa_frames={self.pa_frames} needs at least {min_t} frames, "
                       f"got T={t}")

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    self.check_input(x.shape)
    if not jnp.issubdtype(x.dtype, jnp.floating):
      raise ValueError(f"VRT expects a float clip in [0, 1], got dtype {x.dtype}")
    with kernels.matmul_precision(self.matmul_precision):
      if self.pa_frames:
        return self._restore(x, train)
      return self._interpolate(x, train)

  def _restore(self, x: jax.Array, train: bool) -> jax.Array:
    noise_map = None
    if self.nonblind_denoising:
      x, noise_map = x[..., :self.in_chans], x[..., self.in_chans:]
    x_lq = x
    flows_backward, flows_forward = self.get_flows(x)
    x_backward, x_forward = self.aligned_images(x, flows_backward[0], flows_forward[0])
    x = jnp.concatenate([x, x_backward, x_forward] + ([noise_map] if noise_map is not None
                                                       else []), axis=-1)
    dt = self.dtype
    x = conv_frames(x, self.embed_dims[0], 3, "conv_first", dtype=dt)
    x = x + dense(self.embed_dims[0], "conv_after_body", dt)(
        self.forward_features(x, flows_backward, flows_forward, train))
    if self.upscale == 1:
      return conv_frames(x, self.out_chans, 3, "conv_last", dtype=dt).astype(x_lq.dtype) + x_lq
    num_feat, factors = 64, self.upsample_factors()
    specs = [("conv_before_upsample_0", num_feat),
             *[(f"upsample_{5 * i}", r * r * num_feat) for i, r in enumerate(factors)],
             (f"upsample_{5 * len(factors)}", num_feat), ("conv_last", self.out_chans)]
    convs = {name: Conv(f, (3, 3), padding=1, kernel_init=torch_conv_init(), dtype=dt,
                        name=name) for name, f in specs}
    b, t, h, w, c = x_lq.shape
    size = (h * self.upscale, w * self.upscale)

    def head(xs):  # (N, h, w, C) features and (N, h, w, 3) frames -> (N, H, W, 3)
      f, lq = xs
      f = nn.leaky_relu(convs["conv_before_upsample_0"](f), 0.01)
      for i, r in enumerate(factors):  # Conv + PixelShuffle(r) + LeakyReLU(0.1) per factor.
        f = nn.leaky_relu(pixel_shuffle(convs[f"upsample_{5 * i}"](f), r), 0.1)
      f = convs[f"upsample_{5 * len(factors)}"](f)
      return convs["conv_last"](f).astype(lq.dtype) + resize_bilinear(lq, size)

    xs = (x.reshape(b * t, *x.shape[2:]), x_lq.reshape(b * t, h, w, c))
    # Parameters cannot be created inside a loop; and XLA's CPU backward pass of convolutions
    # inside a loop is an order of magnitude slower, so training runs the head in one piece.
    if self.is_initializing() or train:
      return head(xs).reshape(b, t, *size, -1)
    # At test time the head's full-resolution maps dominate memory: a few frames at a time.
    per_frame = size[0] * size[1] * num_feat * 4 * 4  # About four such maps live at once.
    chunk = memory.chunk_size(b * t, per_frame, _HEAD_BYTES)
    return memory.map_chunks(head, xs, chunk).reshape(b, t, *size, -1)

  def upsample_factors(self) -> list[int]:
    """PixelShuffle factors of the SR head: 2s for a power of 2, or one 3."""
    if self.upscale & (self.upscale - 1) == 0:
      return [2] * (self.upscale.bit_length() - 1)
    if self.upscale == 3:
      return [3]
    raise ValueError(f"upscale {self.upscale} is not supported: use 1, 3 or a power of 2")

  def _interpolate(self, x: jax.Array, train: bool) -> jax.Array:
    x_mean = x.mean(axis=(1, 2, 3), keepdims=True)
    dt = self.dtype
    x = conv_frames(x - x_mean, self.embed_dims[0], 3, "conv_first", dtype=dt)
    x = x + dense(self.embed_dims[0], "conv_after_body", dt)(
        self.forward_features(x, [], [], train))
    b, t, h, w, c = x.shape
    x = x.transpose(0, 2, 3, 1, 4).reshape(b, h, w, t * c)  # Frames stacked along channels.
    x = nn.leaky_relu(Conv(64, (1, 1), kernel_init=torch_conv_init(), dtype=dt,
                           name="linear_fuse")(x), 0.2)
    x = jnp.pad(x, ((0, 0), (3, 3), (3, 3), (0, 0)), mode="reflect")
    x = Conv(self.out_chans, (7, 7), padding="VALID", kernel_init=torch_conv_init(), dtype=dt,
             name="conv_last")(x).astype(x_mean.dtype)
    x = x.reshape(b, h, w, self.out_chans // 3, 3).transpose(0, 3, 1, 2, 4)
    return x + x_mean

  def get_flows(self, x: jax.Array) -> tuple[list[jax.Array], list[jax.Array]]:
    """SpyNet flows between neighbours (and composed 2- and 3-frame flows for pa_frames 4/6).

    x: (B, T, H, W, 3) -> (backward, forward) lists ordered [k=1 at scales 1, 2, 4, 8, k=2 ...],
    each (B, T - k, H / s, W / s, 2). Backward flows align frame t+k to t, forward t-k to t.
    """
    b, t = x.shape[:2]
    x1, x2 = x[:, :-1], x[:, 1:]
    # Both directions in one SpyNet batch. Its pyramid's activations (16-64 channels, which
    # accelerators pad to 128 lanes) would otherwise be kept from the first stage's forward pass
    # to its backward pass: it follows the blocks' remat policy.
    spynet = kernels.remat(SpyNet, self.remat, static_argnums=())
    flows = spynet(name="spynet")(both_directions(x1, x2), both_directions(x2, x1))
    flows = [f.reshape(b, 2, t - 1, *f.shape[1:]) for f in flows]
    fb1 = [f[:, 0] for f in flows]
    ff1 = [f[:, 1] for f in flows]
    fb, ff = list(fb1), list(ff1)
    if self.pa_frames >= 4:
      fb2 = flows_composed(fb1, fb1, forward=False, step=1)
      ff2 = flows_composed(ff1, ff1, forward=True, step=1)
      fb, ff = fb + fb2, ff + ff2
    if self.pa_frames >= 6:
      fb += flows_composed(fb1, fb2, forward=False, step=2)
      ff += flows_composed(ff1, ff2, forward=True, step=2)
    return fb, ff

  @staticmethod
  def aligned_images(x: jax.Array, flows_backward: jax.Array, flows_forward: jax.Array
                     ) -> tuple[jax.Array, jax.Array]:
    """Nearest-neighbour warping of the next / previous frame onto each frame.

    x: (B, T, H, W, C) -> two (B, T, H, W, 4C), zeros where the neighbour does not exist.
    """
    b, t, h, w, c = x.shape
    warped = nearest4_warp(both_directions(x[:, 1:], x[:, :-1]),
                           both_directions(flows_backward, flows_forward))
    warped = warped.reshape(b, 2, t - 1, h, w, 4 * c)
    zeros = jnp.zeros_like(warped[:, 0, :1])
    return (jnp.concatenate([warped[:, 0], zeros], axis=1),
            jnp.concatenate([zeros, warped[:, 1]], axis=1))

  def forward_features(self, x: jax.Array, flows_backward: Sequence[jax.Array],
                       flows_forward: Sequence[jax.Array], train: bool) -> jax.Array:
    """The U-shaped stack and stage 8. x: (B, T, H, W, C0) -> (B, T, H, W, embed_dims[-1])."""
    depths = list(self.depths)
    dpr = np.linspace(0, self.drop_path_rate, sum(depths), dtype=np.float32).tolist()
    ckpt_attn = [self.use_checkpoint_attn and i not in self.no_checkpoint_attn_blocks
                 for i in range(len(depths))]
    level = [0, 1, 2, 3, 2, 1, 0]  # Flow scale index of each stage.
    ws = tuple(self.window_size)

    def stage(i, inp):
      return Stage(
          dim=self.embed_dims[i], depth=depths[i],
          num_heads=self.num_heads[i], window_size=ws, mul_attn_ratio=self.mul_attn_ratio,
          mlp_ratio=self.mlp_ratio, qkv_bias=self.qkv_bias, qk_scale=self.qk_scale,
          drop_path=tuple(dpr[sum(depths[:i]):sum(depths[:i + 1])]), pa_frames=self.pa_frames,
          deformable_groups=self.deformable_groups, reshape=RESHAPES[i],
          max_residue_magnitude=10 / SCALES[i], use_checkpoint_attn=ckpt_attn[i],
          dtype=self.dtype, remat=self.remat, scan_blocks=self.scan_blocks,
          name=f"stage{i + 1}",
      )(inp, flows_backward[level[i]::4], flows_forward[level[i]::4], train)

    x1 = stage(0, x)
    x2 = stage(1, x1)
    x3 = stage(2, x2)
    x4 = stage(3, x3)
    x = stage(4, x4)
    x = stage(5, x + x3)
    x = stage(6, x + x2)
    x = x + x1

    x = dense(self.embed_dims[7], "stage8_0_2", self.dtype)(layer_norm("stage8_0_1", self.dtype)(x))
    for i in range(7, len(depths)):
      window = (1, ws[1], ws[2]) if i in self.indep_reconsts else ws
      x = RTMSA(dim=self.embed_dims[i], depth=depths[i], num_heads=self.num_heads[i],
                window_size=window, mlp_ratio=self.mlp_ratio, qkv_bias=self.qkv_bias,
                qk_scale=self.qk_scale, drop_path=tuple(dpr[sum(depths[:i]):sum(depths[:i + 1])]),
                use_checkpoint_attn=ckpt_attn[i], dtype=self.dtype, remat=self.remat,
                scan=self.scan_blocks, name=f"stage8_{i - 6}")(x, train)
    return layer_norm("norm", self.dtype)(x)
