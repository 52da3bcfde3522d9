"""Memory helpers: same values and gradients as the plain computations they replace."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vrt_jax import attention, memory


def _naive_attention(qkv, qkv_mut, nh, scale, bias, labels):
  """Self (+ mutual) window attention over all windows at once: no loop, no recomputation."""
  b_, n, c3 = qkv.shape
  hd = c3 // (3 * nh)

  def heads(t):
    t = t.reshape(b_, n, 3, nh, hd).transpose(2, 0, 3, 1, 4)
    return t[0], t[1], t[2]

  def mask(labels):  # (B_, 1, N', N') or 0.
    if labels is None:
      return 0.
    m = attention.mask_from_labels(jnp.asarray(labels))  # (nW, N', N')
    return jnp.tile(m, (b_ // labels.shape[0], 1, 1))[:, None]

  def attend(q, k, v, bias, mask):
    s = jnp.einsum("whqd,whkd->whqk", q * scale, k) + bias + mask
    out = jnp.einsum("whqk,whkd->wqhd", jax.nn.softmax(s, -1), v)
    return out.reshape(b_, -1, nh * hd)

  out = attend(*heads(qkv), 0. if bias is None else bias, mask(labels))
  if qkv_mut is None:
    return out
  q, k, v = heads(qkv_mut)
  h = n // 2
  m = mask(None if labels is None else labels[:, :h])
  x1 = attend(q[:, :, h:], k[:, :, :h], v[:, :, :h], 0., m)
  x2 = attend(q[:, :, :h], k[:, :, h:], v[:, :, h:], 0., m)
  return jnp.concatenate([jnp.concatenate([x1, x2], axis=1), out], axis=2)


@pytest.mark.parametrize("loop", [False, True])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("mutual", [False, True])
def test_window_attention_values_and_gradients(monkeypatch, loop, masked, mutual):
  if loop:  # Force the chunked loop with recomputation on tiny windows.
    monkeypatch.setattr(attention, "_LOGITS_BYTES_PER_STEP", 2 * 3 * 16 * 16 * 4)
  rng = np.random.default_rng(0)
  b, nw, nh, n, hd = 2, 4, 3, 16, 5
  qkv, qkv_mut = (jnp.asarray(rng.standard_normal((b * nw, n, 3 * nh * hd)), jnp.float32)
                  for _ in range(2))
  bias = jnp.asarray(rng.standard_normal((nh, n, n)), jnp.float32)
  labels = rng.integers(0, 3, (nw, n)).astype(np.int32) if masked else None
  args = (qkv, qkv_mut, bias)

  def loss(fn, qkv, qkv_mut, bias):
    out = fn(qkv, qkv_mut if mutual else None, nh, 0.5, bias, labels)
    assert out.shape == (b * nw, n, (2 if mutual else 1) * nh * hd)
    return jnp.sum(jnp.sin(out))

  argnums = tuple(range(len(args)))
  got = jax.jit(jax.value_and_grad(lambda *a: loss(attention._attention, *a), argnums))(*args)
  want = jax.value_and_grad(lambda *a: loss(_naive_attention, *a), argnums)(*args)
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


def test_compiled_per_shape_passes_its_cpu_options_and_skips_unknown_ones():
  x = np.ones(3, np.float32)
  assert memory.CompiledPerShape(lambda a: a + 1).cpu_compiler_options == (
      memory.LEAN_CPU_COMPILER_OPTIONS)
  # An option this XLA does not know: compiled with the defaults instead.
  np.testing.assert_array_equal(
      memory.CompiledPerShape(lambda a: a + 1, {"xla_cpu_no_such_option": True})(x), [2, 2, 2])
  # A known option reaches the compiler (a bad value is refused there).
  with pytest.raises(jax.errors.JaxRuntimeError):
    memory.CompiledPerShape(lambda a: a + 1, {"xla_cpu_use_fusion_emitters": "maybe"})(x)
