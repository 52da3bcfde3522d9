"""Temporal mutual self attention (TMSA, VRT Sec. 3.2): blocks, groups and the residual group.

Features inside a group are (B, D, H, W, C) with D the number of frames.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vrt_jax import kernels, memory
from vrt_jax.attention import (
  WindowAttention,
  compute_mask_labels,
  get_window_size,
  window_partition,
  window_reverse,
)
from vrt_jax.layers import LayerNorm, geglu
from vrt_jax.spynet import torch_conv_init


def layer_norm(name: str, dtype: Any = jnp.float32) -> LayerNorm:
  # PyTorch's LayerNorm (eps 1e-5, exact variance); float32 statistics, output in `dtype`.
  return LayerNorm(epsilon=1e-5, dtype=dtype, name=name)


def dense(features: int, name: str, dtype: Any = jnp.float32) -> nn.Dense:
  # float32 parameters; inputs and kernel are cast to the compute `dtype`.
  return nn.Dense(features, kernel_init=torch_conv_init(), dtype=dtype, name=name)


class MlpGEGLU(nn.Module, kw_only=True):
  """Feed-forward network with a GELU-gated linear unit: fc2(GELU(fc11(x)) * fc12(x)).

  x: (..., C_in) -> (..., out_features).
  """
  hidden_features: int
  out_features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    h = geglu(dense(self.hidden_features, "fc11", self.dtype)(x),
              dense(self.hidden_features, "fc12", self.dtype)(x))
    return dense(self.out_features, "fc2", self.dtype)(h)


def drop_path(module: nn.Module, x: jax.Array, rate: float | jax.Array, train: bool,
              key: jax.Array | None = None) -> jax.Array:
  """Stochastic depth: drops the residual branch per sample with probability `rate`.

  `rate` may be traced (a scanned block's); the mask is drawn from `key`, else from the
  module's 'dropout' rng.
  """
  if not train or (isinstance(rate, (int, float)) and rate == 0.):
    return x
  keep = 1. - rate
  shape = (x.shape[0],) + (1,) * (x.ndim - 1)
  mask = jax.random.bernoulli(module.make_rng("dropout") if key is None else key, keep, shape)
  # A per-sample factor (its gradient keeps B numbers, not a full-size mask).
  return x * (mask / keep).astype(x.dtype)


class TMSA(nn.Module, kw_only=True):
  """One TMSA block: (shifted) window attention, then a GEGLU MLP, each with a residual.

  With `mut_attn` the attention is mutual + self attention over windows of two frames; without,
  self attention only. `use_checkpoint_attn` recomputes the attention part in the backward
  pass; the feed-forward part always is. x: (B, D, H, W, C) -> (B, D, H, W, C).
  """
  dim: int
  num_heads: int
  window_size: tuple[int, int, int]
  shift_size: tuple[int, int, int] = (0, 0, 0)
  mut_attn: bool = True
  mlp_ratio: float = 2.
  qkv_bias: bool = True
  qk_scale: float | None = None
  drop_path: float = 0.
  use_checkpoint_attn: bool = False
  dtype: Any = jnp.float32

  def setup(self):
    self.norm1 = layer_norm("norm1", self.dtype)
    self.attn = WindowAttention(
        dim=self.dim, window_size=tuple(self.window_size), num_heads=self.num_heads,
        qkv_bias=self.qkv_bias, qk_scale=self.qk_scale, mut_attn=self.mut_attn, dtype=self.dtype)
    self.norm2 = layer_norm("norm2", self.dtype)
    self.mlp = MlpGEGLU(hidden_features=int(self.dim * self.mlp_ratio), out_features=self.dim,
                        dtype=self.dtype)

  def attention_part(self, x: jax.Array) -> jax.Array:
    b, d, h, w, c = x.shape
    window_size, shift_size = get_window_size((d, h, w), self.window_size, self.shift_size)
    x = self.norm1(x)
    # Zero padding after the norm: padded tokens are keys/values too, as in the reference.
    pad = [(0, -n % s) for n, s in zip((d, h, w), window_size, strict=True)]
    x = jnp.pad(x, [(0, 0), *pad, (0, 0)])
    _, dp, hp, wp, _ = x.shape
    shifted = any(s > 0 for s in shift_size)
    labels = None
    if shifted:
      x = jnp.roll(x, [-s for s in shift_size], axis=(1, 2, 3))
      labels = compute_mask_labels(dp, hp, wp, window_size, shift_size)
    windows = self.attn(window_partition(x, window_size, grid=True), mask_labels=labels)
    x = window_reverse(windows, window_size, b, dp, hp, wp)
    if shifted:
      x = jnp.roll(x, list(shift_size), axis=(1, 2, 3))
    return x[:, :d, :h, :w]

  def ffn_part(self, x: jax.Array) -> jax.Array:
    return self.mlp(self.norm2(x))

  def recomputed(self, part: Callable[[TMSA, jax.Array], jax.Array], x: jax.Array, *,
                 on_accelerators: bool) -> jax.Array:
    """part(self, x), whose backward pass recomputes part's activations from x.

    Like the reference's torch.checkpoint. On CPU through `memory.recomputed`: nn.remat would
    not do on XLA's CPU backend, whose scheduler moves every recomputation up into the forward
    pass, so nothing is saved. Elsewhere `jax.checkpoint` if `on_accelerators`, else part
    as it is (the block's remat policy decides).
    """
    if self.is_initializing():
      return part(self, x)
    unbound = self.clone(parent=None)

    def f(x, params):
      return unbound.apply({"params": params}, x, method=part)

    xla = jax.checkpoint(f) if on_accelerators else f
    return kernels.dispatch(cpu=memory.recomputed(f), xla=xla)(x, self.variables["params"])

  def __call__(self, x: jax.Array, train: bool = False, key: jax.Array | None = None,
               rate: jax.Array | None = None) -> jax.Array:
    """key: this block's stochastic-depth key (else the 'dropout' rng); rate: its drop-path
    rate when traced (a scanned block), else the `drop_path` field."""
    rate = self.drop_path if rate is None else rate
    keys = (None, None) if key is None else tuple(jax.random.split(key))
    attn = TMSA.attention_part
    y = (self.recomputed(attn, x, on_accelerators=True) if self.use_checkpoint_attn
         else attn(self, x))
    x = x + drop_path(self, y, rate, train, keys[0])
    # On CPU the feed-forward part is always recomputed: its norm and hidden activations are
    # five C-wide copies of x per block, the largest residuals of training, and the cheapest to
    # rebuild (on CPU, memory that is fresh every step costs more time than the matmuls).
    y = self.recomputed(TMSA.ffn_part, x, on_accelerators=False)
    return x + drop_path(self, y, rate, train, keys[1])


class TMSAPair(nn.Module, kw_only=True):
  """Two TMSA blocks, unshifted ('even') then shifted by half a window ('odd'): the body that
  TMSAG scans over.

  Called as (x, (rates, index), key) -> (x, None): rates (2,) are the blocks' drop-path rates,
  index (2,) their block numbers in the group (their stochastic-depth keys are
  fold_in(key, index)); key is the group's, or None without stochastic depth.
  """
  dim: int
  num_heads: int
  window_size: tuple[int, int, int]
  mut_attn: bool = True
  mlp_ratio: float = 2.
  qkv_bias: bool = True
  qk_scale: float | None = None
  use_checkpoint_attn: bool = False
  dtype: Any = jnp.float32
  remat: str = "none"
  train: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, xs: tuple[jax.Array, jax.Array], key: jax.Array | None
               ) -> tuple[jax.Array, None]:
    rates, index = xs
    block = kernels.remat(TMSA, self.remat)
    shift = tuple(s // 2 for s in self.window_size)
    for j, (name, shift_size) in enumerate((("even", (0, 0, 0)), ("odd", shift))):
      x = block(dim=self.dim, num_heads=self.num_heads, window_size=tuple(self.window_size),
                shift_size=shift_size, mut_attn=self.mut_attn, mlp_ratio=self.mlp_ratio,
                qkv_bias=self.qkv_bias, qk_scale=self.qk_scale,
                use_checkpoint_attn=self.use_checkpoint_attn, dtype=self.dtype, name=name)(
          *((x, self.train) if key is None else  # No stochastic depth in this group.
            (x, self.train, jax.random.fold_in(key, index[j]), rates[j])))
    return x, None


class TMSAG(nn.Module, kw_only=True):
  """A group of TMSA blocks; odd blocks use windows shifted by half a window.

  With `scan`, the (unshifted, shifted) block pairs run as one `nn.scan`ned TMSAPair whose
  parameters are stacked on a leading axis (`pairs/even`, `pairs/odd`; an odd last block stays
  `blocks_{depth-1}`): the compiler sees one pair instead of `depth` blocks. Same function,
  same stochastic depth: block i's key is fold_in(the group's 'dropout' rng, i) either way.
  `stack_blocks` / `unstack_blocks` convert the parameter layouts.
  x: (B, D, H, W, C) -> (B, D, H, W, C).
  """
  dim: int
  depth: int
  num_heads: int
  window_size: tuple[int, int, int]
  mut_attn: bool = True
  mlp_ratio: float = 2.
  qkv_bias: bool = True
  qk_scale: float | None = None
  drop_path: float | Sequence[float] = 0.
  use_checkpoint_attn: bool = False
  dtype: Any = jnp.float32
  remat: str = "none"  # What each block keeps for the backward pass: kernels.REMAT_POLICIES.
  scan: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    rates = [float(self.drop_path[i] if isinstance(self.drop_path, Sequence)
                   else self.drop_path) for i in range(self.depth)]
    key = self.make_rng("dropout") if train and any(r > 0 for r in rates) else None
    common = dict(dim=self.dim, num_heads=self.num_heads, window_size=tuple(self.window_size),
                  mut_attn=self.mut_attn, mlp_ratio=self.mlp_ratio, qkv_bias=self.qkv_bias,
                  qk_scale=self.qk_scale, use_checkpoint_attn=self.use_checkpoint_attn,
                  dtype=self.dtype)
    pairs = self.depth // 2 if self.scan else 0
    if pairs:
      scanned = nn.scan(TMSAPair, variable_axes={"params": 0},
                        split_rngs={"params": True, "dropout": True},
                        in_axes=(0, nn.broadcast), length=pairs,
                        # Flax's check traces each pair twice: nearly half a VRT's tracing
                        # time (001 forward 6.8 -> 3.7 s). Initialisation keeps it: skipping it
                        # changes which random draws the parameters get from a seed.
                        check_constancy_invariants=self.is_initializing())
      xs = (jnp.asarray(np.reshape(rates[:2 * pairs], (pairs, 2)), jnp.float32),
            jnp.arange(2 * pairs, dtype=jnp.uint32).reshape(pairs, 2))
      x, _ = scanned(**common, remat=self.remat, train=train, name=PAIRS)(x, xs, key)
    shift = tuple(s // 2 for s in self.window_size)
    block = kernels.remat(TMSA, self.remat)
    for i in range(2 * pairs, self.depth):
      x = block(**common, shift_size=(0, 0, 0) if i % 2 == 0 else shift, drop_path=rates[i],
                name=f"blocks_{i}")(x, train, None if key is None else jax.random.fold_in(key, i))
    return x


# ---------------------------------------------------------------- parameter layouts of TMSAG

PAIRS = "pairs"
_BLOCK = re.compile(r"blocks_(\d+)$")


def _is_concrete(leaf: Any) -> bool:
  return isinstance(leaf, (np.ndarray, np.generic, jax.Array))


def _stack(*leaves: Any) -> Any:
  if _is_concrete(leaves[0]):
    return np.stack([np.asarray(a) for a in leaves])
  return jax.ShapeDtypeStruct((len(leaves), *leaves[0].shape), leaves[0].dtype)


def _take(leaf: Any, k: int) -> Any:
  if _is_concrete(leaf):
    return leaf[k]
  return jax.ShapeDtypeStruct(tuple(leaf.shape[1:]), leaf.dtype)


def stack_blocks(tree: Any) -> Any:
  """A params tree with every TMSA group in the scanned layout (TMSAG(scan=True)).

  blocks_{2k} -> pairs/even[k], blocks_{2k+1} -> pairs/odd[k]; an odd last block keeps its
  name. Leaves may be arrays (stacked as numpy) or shapes (ShapeDtypeStruct, Orbax metadata).
  Groups already scanned are left as they are; the rest of the tree is unchanged.
  """
  if not isinstance(tree, Mapping):
    return tree
  if PAIRS in tree:
    return dict(tree)
  blocks = {int(m.group(1)): v for k, v in tree.items() if (m := _BLOCK.match(str(k)))}
  out = {k: stack_blocks(v) for k, v in tree.items() if not _BLOCK.match(str(k))}
  if not blocks:
    return out
  depth = len(blocks)
  if sorted(blocks) != list(range(depth)):
    raise ValueError(f"TMSA blocks {sorted(blocks)} are not numbered 0..{depth - 1}")
  pairs = depth // 2
  if pairs:
    out[PAIRS] = {name: jax.tree.map(_stack, *[blocks[2 * k + j] for k in range(pairs)])
                  for j, name in enumerate(("even", "odd"))}
  if depth % 2:
    out[f"blocks_{depth - 1}"] = blocks[depth - 1]
  return out


def unstack_blocks(tree: Any) -> Any:
  """The inverse of `stack_blocks`: every TMSA group in the per-block layout (blocks_{i})."""
  if not isinstance(tree, Mapping):
    return tree
  out = {k: unstack_blocks(v) for k, v in tree.items() if k != PAIRS}
  if PAIRS in tree:
    pairs = tree[PAIRS]
    n = jax.tree.leaves(pairs["even"])[0].shape[0]
    for k in range(n):
      for j, name in enumerate(("even", "odd")):
        out[f"blocks_{2 * k + j}"] = jax.tree.map(lambda a, k=k: _take(a, k), pairs[name])
  return out


def is_scanned(tree: Any) -> bool:
  """Whether a params tree holds a TMSA group in the scanned layout."""
  if not isinstance(tree, Mapping):
    return False
  return PAIRS in tree or any(is_scanned(v) for v in tree.values())


def to_block_layout(tree: Any, scanned: bool) -> Any:
  """`tree` in the scanned (stack_blocks) or per-block (unstack_blocks) layout."""
  return stack_blocks(tree) if scanned else unstack_blocks(tree)


class RTMSA(nn.Module, kw_only=True):
  """Residual TMSA group of stage 8: x + Linear(TMSAG(x)), self attention only.

  x: (B, D, H, W, C) -> (B, D, H, W, C).
  """
  dim: int
  depth: int
  num_heads: int
  window_size: tuple[int, int, int]
  mlp_ratio: float = 2.
  qkv_bias: bool = True
  qk_scale: float | None = None
  drop_path: float | Sequence[float] = 0.
  use_checkpoint_attn: bool = False
  dtype: Any = jnp.float32
  remat: str = "none"
  scan: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    y = TMSAG(dim=self.dim, depth=self.depth, num_heads=self.num_heads,
              window_size=self.window_size, mut_attn=False, mlp_ratio=self.mlp_ratio,
              qkv_bias=self.qkv_bias, qk_scale=self.qk_scale, drop_path=self.drop_path,
              use_checkpoint_attn=self.use_checkpoint_attn, dtype=self.dtype,
              remat=self.remat, scan=self.scan, name="residual_group")(x, train)
    return x + dense(self.dim, "linear", self.dtype)(y)


