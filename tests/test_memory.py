"""Memory helpers: same values and gradients as the plain computations they replace."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vrt_jax import attention, memory


def _naive_attention(q, k, v, scale, bias, labels):
  """Softmax window attention over all windows at once, no loop, no recomputation."""
  b_, nh, n, hd = q.shape
  attn = jnp.einsum("whqd,whkd->whqk", q * scale, k)
  if bias is not None:
    attn = attn + bias
  if labels is not None:
    mask = attention.mask_from_labels(jnp.asarray(labels))  # (nW, N, N)
    attn = attn.reshape(-1, labels.shape[0], nh, n, n) + mask[None, :, None]
    attn = attn.reshape(b_, nh, n, n)
  out = jnp.einsum("whqk,whkd->wqhd", jax.nn.softmax(attn, -1), v)
  return out.reshape(b_, n, nh * hd)


@pytest.mark.parametrize("loop", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_window_attention_values_and_gradients(monkeypatch, loop, masked):
  if loop:  # Force the chunked loop with recomputation on tiny windows.
    monkeypatch.setattr(attention, "_LOGITS_BYTES_PER_STEP", 2 * 3 * 16 * 16 * 4)
  rng = np.random.default_rng(0)
  b, nw, nh, n, hd = 2, 4, 3, 16, 5
  q, k, v = (jnp.asarray(rng.standard_normal((b * nw, nh, n, hd)), jnp.float32)
             for _ in range(3))
  bias = jnp.asarray(rng.standard_normal((nh, n, n)), jnp.float32)
  labels = rng.integers(0, 3, (nw, n)).astype(np.int32) if masked else None

  def loss(fn, q, k, v, bias):
    return jnp.sum(jnp.sin(fn(q, k, v, 0.5, bias, labels)))

  got = jax.jit(jax.value_and_grad(lambda *a: loss(attention._attention, *a), (0, 1, 2, 3)))(
      q, k, v, bias)
  want = jax.value_and_grad(lambda *a: loss(_naive_attention, *a), (0, 1, 2, 3))(q, k, v, bias)
  np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-4)
  for g, w in zip(got[1], want[1], strict=True):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


def test_map_chunks_matches_lax_map_with_gradients():
  xs = (jnp.arange(24.).reshape(6, 4), jnp.arange(6, dtype=jnp.int32))
  def f(a, i):  # One element.
    return jnp.tanh(a * i).sum(-1, keepdims=True) * a

  def via_helper(a):
    return memory.map_chunks(lambda c: jax.vmap(f)(*c), (a, xs[1]), 2).sum()

  def via_lax(a):
    return jax.lax.map(lambda c: f(*c), (a, xs[1]), batch_size=2).sum()

  np.testing.assert_allclose(via_helper(xs[0] / 10), via_lax(xs[0] / 10), rtol=1e-6)
  np.testing.assert_allclose(jax.grad(via_helper)(xs[0] / 10), jax.grad(via_lax)(xs[0] / 10),
                             rtol=1e-6)


def test_after_keeps_values_even_when_the_dependency_is_not_finite():
  t = jnp.array([1.5, -2.0])
  for x in (jnp.array([3.0]), jnp.array([jnp.nan]), jnp.array([-jnp.inf])):
    np.testing.assert_array_equal(jax.jit(memory.after)(t, x), t)
  np.testing.assert_array_equal(memory.after(jnp.array([4, 5]), jnp.array([jnp.nan])), [4, 5])


def test_recomputed_gradient_equals_the_plain_gradient():
  def f(x, w, idx):
    return jnp.tanh(x @ w)[idx]

  x, w = jnp.ones((3, 4)) * 0.3, jnp.linspace(-1, 1, 8).reshape(4, 2)
  idx = jnp.array([2, 0])
  plain = jax.grad(lambda x, w: f(x, w, idx).sum() ** 2, (0, 1))(x, w)
  wrapped = jax.jit(jax.grad(lambda x, w: memory.recomputed(f)(x, w, idx).sum() ** 2,
                             (0, 1)))(x, w)
  for a, b in zip(plain, wrapped, strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-6)


def test_compiled_per_shape_compiles_once_per_shape():
  fn = memory.CompiledPerShape(lambda a, b: a * 2 + b)
  np.testing.assert_array_equal(fn(np.ones(3, np.float32), np.float32(1)), [3, 3, 3])
  fn(np.zeros(3, np.float32), np.float32(2))
  assert len(fn.compiled) == 1
  fn(np.zeros(4, np.float32), np.float32(2))
  assert len(fn.compiled) == 2
