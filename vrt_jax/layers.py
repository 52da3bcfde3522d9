"""Layers with lean, fast gradients: 2-D convolution, LayerNorm, the GEGLU gate.

Each computes what its flax / PyTorch counterpart computes. On CPU (vrt_jax.kernels) each has a
hand-written gradient that keeps fewer activations for the backward pass (in training, memory
that XLA's CPU client must fault in afresh on every step) and avoids the slow paths of XLA's CPU
backend; elsewhere they are plain XLA with autodiff:

* `Conv`: the weight gradient one kernel tap at a time, shifted(x)^T @ dy as a plain matmul
  (XLA's own is 3-4x slower than the convolution; for VRT's 3x3 offset convolutions it was the
  largest item of a training step). The forward pass and input gradient are XLA's.
* `LayerNorm`: keeps the input and two numbers per row, instead of three normalised copies.
* `geglu`: GELU(a) * b keeps a and b only; the GELU is recomputed in the backward pass.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vrt_jax import kernels, memory


def conv2d(x: jax.Array, kernel: jax.Array, padding: int = 0) -> jax.Array:
  """Cross-correlation with zero padding `padding` on each side, stride 1.

  x: (N, H, W, Cin); kernel: (kh, kw, Cin, Cout) -> (N, H + 2p - kh + 1, W + 2p - kw + 1, Cout).
  """
  return _conv2d(x, kernel, int(padding))


def _conv2d_xla(x: jax.Array, kernel: jax.Array, padding: int) -> jax.Array:
  return jax.lax.conv_general_dilated(x, kernel, (1, 1), ((padding, padding),) * 2,
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


_conv2d = kernels.dispatch(cpu=lambda x, kernel, padding: _conv(padding)(x, kernel),
                           xla=_conv2d_xla)


@functools.cache
def _conv(padding: int) -> Callable[[jax.Array, jax.Array], jax.Array]:
  pads = ((padding, padding), (padding, padding))

  def forward(x, kernel):
    return _conv2d_xla(x, kernel, padding)

  @jax.custom_vjp
  def conv(x, kernel):
    return forward(x, kernel)

  def conv_fwd(x, kernel):
    return forward(x, kernel), (x, kernel)

  def conv_bwd(res, dy):
    x, kernel = memory.tie(res, dy)
    dx = jax.vjp(lambda x: forward(x, kernel), x)[1](dy)[0]
    kh, kw, cin, cout = kernel.shape
    n, ho, wo, _ = dy.shape
    xp = jnp.pad(x, ((0, 0), *pads, (0, 0)))
    dy3 = dy.reshape(n, -1, cout)

    # One tap per iteration, so that a single shifted copy of x exists at a time. The loop keeps
    # one partial sum per image and sums them after it: under data parallelism a sum over the
    # batch inside the loop would be a cross-device all-reduce per tap, which on XLA's CPU
    # backend blocks worker threads (many fake devices on few cores deadlock).
    def tap(t, dk):
      i, j = t // kw, t % kw
      shifted = jax.lax.dynamic_slice(xp, (0, i, j, 0), (n, ho, wo, cin)).reshape(n, -1, cin)
      g = jnp.einsum("nrc,nrd->ncd", shifted, dy3, preferred_element_type=jnp.float32)
      return jax.lax.dynamic_update_index_in_dim(dk, g.astype(dk.dtype), t, 0)

    dk = memory.after(jnp.zeros((kh * kw, n, cin, cout), kernel.dtype), dy)
    dk = jax.lax.fori_loop(0, kh * kw, tap, dk) if kh * kw > 1 else tap(0, dk)
    return dx, jnp.sum(dk, axis=1).reshape(kernel.shape)

  conv.defvjp(conv_fwd, conv_bwd)
  return conv


class Conv(nn.Module):
  """`flax.linen.Conv` for 2-D, stride 1, symmetric zero padding (int) or 'VALID'.

  Same parameters (`kernel` (kh, kw, Cin, Cout), `bias`), computed in `dtype` with float32
  parameters. x: (N, H, W, Cin) -> (N, H', W', features).
  """
  features: int
  kernel_size: tuple[int, int]
  padding: int | str = 0
  kernel_init: Callable[..., Any] = nn.initializers.lecun_normal()
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param("kernel", self.kernel_init,
                        (*self.kernel_size, x.shape[-1], self.features))
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    padding = 0 if self.padding == "VALID" else self.padding
    if not isinstance(padding, int):
      raise ValueError(f"Conv padding must be an int or 'VALID', got {self.padding!r}")
    y = conv2d(x.astype(self.dtype), kernel.astype(self.dtype), padding)
    return y + bias.astype(self.dtype)


class LayerNorm(nn.Module):
  """`flax.linen.LayerNorm` over the last axis with the exact two-pass variance (PyTorch's).

  Statistics are float32 for any `dtype`; the output is in `dtype`. Parameters `scale`, `bias`.
  x: (..., C) -> (..., C).
  """
  epsilon: float = 1e-5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (c,))
    bias = self.param("bias", nn.initializers.zeros, (c,))
    return _layer_norm_kernel(x, scale, bias, float(self.epsilon), jnp.dtype(self.dtype))


def _layer_norm_forward(x: jax.Array, scale: jax.Array, bias: jax.Array, eps: float, dtype: Any
                        ) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
  """The normalised output and (mean, rstd), in the order of operations of flax's _normalize."""
  x = x.astype(jnp.float32)
  mean = jnp.mean(x, axis=-1, keepdims=True)
  rstd = jax.lax.rsqrt(jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True) + eps)
  return ((x - mean) * (rstd * scale) + bias).astype(dtype), (mean, rstd)


_layer_norm_kernel = kernels.dispatch(
    cpu=lambda x, scale, bias, eps, dtype: _layer_norm(eps, dtype)(x, scale, bias),
    xla=lambda x, scale, bias, eps, dtype: _layer_norm_forward(x, scale, bias, eps, dtype)[0])


@functools.cache
def _layer_norm(eps: float, dtype: Any) -> Callable[..., jax.Array]:
  def forward(x, scale, bias):
    return _layer_norm_forward(x, scale, bias, eps, dtype)

  @jax.custom_vjp
  def norm(x, scale, bias):
    return forward(x, scale, bias)[0]

  def norm_fwd(x, scale, bias):
    y, (mean, rstd) = forward(x, scale, bias)
    return y, (x, mean, rstd, scale)

  def norm_bwd(res, dy):
    x, mean, rstd, scale = memory.tie(res, dy)
    xhat = (x.astype(jnp.float32) - mean) * rstd
    dy = dy.astype(jnp.float32)
    g = dy * scale
    dx = rstd * (g - jnp.mean(g, axis=-1, keepdims=True)
                 - xhat * jnp.mean(g * xhat, axis=-1, keepdims=True))
    rows = tuple(range(x.ndim - 1))
    return dx.astype(x.dtype), jnp.sum(dy * xhat, axis=rows), jnp.sum(dy, axis=rows)

  norm.defvjp(norm_fwd, norm_bwd)
  return norm


def _gelu_parts(a: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Phi(a) and a * phi(a): GELU(a) = a * Phi(a) and GELU'(a) = Phi(a) + a * phi(a)."""
  cdf = 0.5 * (1 + jax.lax.erf(a * np.asarray(2 ** -0.5, a.dtype)))
  return cdf, a * np.asarray((2 * np.pi) ** -0.5, a.dtype) * jnp.exp(-0.5 * a * a)


def _geglu_xla(a: jax.Array, b: jax.Array) -> jax.Array:
  return nn.gelu(a, approximate=False) * b


@jax.custom_vjp
def _geglu_cpu(a: jax.Array, b: jax.Array) -> jax.Array:
  """GELU(a) * b with the exact GELU (PyTorch's nn.GELU()).

  The forward pass is jax.nn.gelu's erfc form: with the erf form, XLA's CPU fusion keeps more
  of the MLP's hidden activations alive (006 at 128x128: 1372 vs 975 MiB of temporaries) and is
  no faster. The backward pass uses erf, which is cheaper there.
  """
  return _geglu_xla(a, b)


def _geglu_fwd(a, b):
  return _geglu_cpu(a, b), (a, b)


def _geglu_bwd(res, g):
  a, b = memory.tie(res, g)
  cdf, a_pdf = _gelu_parts(a)
  return g * b * (cdf + a_pdf), g * (a * cdf)


_geglu_cpu.defvjp(_geglu_fwd, _geglu_bwd)
geglu = kernels.dispatch(cpu=_geglu_cpu, xla=_geglu_xla)
geglu.__doc__ = "GELU(a) * b with the exact GELU (PyTorch's nn.GELU()). a, b: (..., C)."
