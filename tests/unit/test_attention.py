"""Window attention's bookkeeping: partitions, shifted-window masks, relative positions."""

import itertools

import jax
import numpy as np
import pytest

from vrt_jax import attention


@pytest.mark.parametrize("window", [(1, 1, 1), (2, 4, 4), (2, 8, 4), (4, 2, 8)])
def test_window_partition_and_reverse_round_trip(window):
  b, d, h, w, c = 2, 4, 8, 16, 3
  x = jax.random.normal(jax.random.key(0), (b, d, h, w, c))
  windows = attention.window_partition(x, window)
  n = window[0] * window[1] * window[2]
  assert windows.shape == (b * d * h * w // n, n, c)
  # The first window is the top-left-front block, flattened in (d, h, w) order.
  np.testing.assert_array_equal(windows[0], x[0, :window[0], :window[1], :window[2]].reshape(n, c))
  np.testing.assert_array_equal(attention.window_reverse(windows, window, b, d, h, w), x)


CASES = [((4, 16, 16), (2, 8, 8), (1, 4, 4)), ((4, 32, 40), (2, 8, 8), (1, 4, 4)),
         ((6, 16, 24), (6, 8, 8), (3, 4, 4)), ((2, 8, 8), (2, 4, 4), (0, 2, 2)),
         ((4, 8, 16), (2, 8, 8), (1, 0, 4))]


@pytest.mark.parametrize("size,window,shift", CASES)
def test_mask_patterns_rebuild_compute_mask(size, window, shift):
  mask = attention.compute_mask(*size, window, shift)
  n = window[0] * window[1] * window[2]
  assert mask.shape == (np.prod(size) // n, n, n)
  assert set(np.unique(mask)) <= {0.0, -100.0}
  np.testing.assert_array_equal(mask, mask.transpose(0, 2, 1))  # Same region is symmetric.
  assert np.all(np.diagonal(mask, axis1=1, axis2=2) == 0)  # A token always sees itself.
  masks, index = attention.mask_patterns(attention.compute_mask_labels(*size, window, shift))
  # Only the last window along each axis differs from the others: at most 2 x 2 x 2 patterns.
  assert len(masks) <= min(len(mask), 8)
  np.testing.assert_array_equal(masks[index], mask)


def test_unshifted_windows_are_not_masked():
  mask = attention.compute_mask(4, 16, 16, (2, 8, 8), (0, 0, 0))
  assert not mask.any()


def test_shifted_mask_separates_the_wrapped_regions():
  # One window covering the whole (2, 4, 4) input shifted by (1, 2, 2): the cyclic shift brings
  # tokens from 2 x 2 x 2 regions together; only tokens of the same region may attend.
  labels = attention.compute_mask_labels(2, 4, 4, (2, 4, 4), (1, 2, 2))
  assert labels.shape == (1, 32) and len(np.unique(labels)) == 8
  mask = attention.compute_mask(2, 4, 4, (2, 4, 4), (1, 2, 2))[0]
  coords = list(itertools.product(range(2), range(4), range(4)))
  region = [(dd >= 1, hh >= 2, ww >= 2) for dd, hh, ww in coords]
  want = np.array([[0.0 if ri == rj else -100.0 for rj in region] for ri in region])
  np.testing.assert_array_equal(mask, want)


@pytest.mark.parametrize("window", [(2, 8, 8), (2, 3, 4), (1, 4, 4)])
def test_relative_position_index_is_a_bijection_of_offsets(window):
  idx = attention.relative_position_index(window)
  coords = np.array(list(itertools.product(*[range(s) for s in window])))
  diffs = coords[:, None, :] - coords[None, :, :]
  size = np.prod([2 * s - 1 for s in window])
  assert idx.shape == (len(coords),) * 2 and idx.min() >= 0 and idx.max() < size
  # Equal index <=> equal offset, and every offset in the window is reachable.
  flat_diffs = diffs.reshape(-1, 3)
  table = {}
  for i, d in zip(idx.reshape(-1), map(tuple, flat_diffs), strict=True):
    assert table.setdefault(int(i), d) == d
  assert len(table) == len({tuple(d) for d in flat_diffs}) == size
  centre = idx[0, 0]
  assert np.all(np.diagonal(idx) == centre) and np.all(idx + idx.T == 2 * centre)


@pytest.mark.parametrize("window", [(2, 8, 8), (6, 8, 8), (1, 3, 5), (4, 2, 7)])
def test_relative_position_bias_without_a_gather_equals_the_table_lookup(window):
  """The accelerator path builds the bias from one-hot matmuls (no gather of 6-float rows); it
  must equal the reference's table[relative_position_index[:n, :n]] exactly, for whole windows
  and for the first n tokens of a window cut by a small input."""
  size = int(np.prod([2 * s - 1 for s in window]))
  table = jax.random.normal(jax.random.key(0), (size, 3)) * 0.02
  full = int(np.prod(window))
  for n in sorted({full, max(1, full // 2), max(1, full - 3)}):
    index = attention.relative_position_index(window)[:n, :n]
    want = np.asarray(table)[index].transpose(2, 0, 1)
    got = jax.jit(attention._relative_position_bias_xla, static_argnums=(1, 2))(table, window, n)
    np.testing.assert_array_equal(np.asarray(got), want)
    np.testing.assert_array_equal(
        np.asarray(attention._relative_position_bias_cpu(table, window, n)), want)


def test_relative_position_bias_keeps_lane_dense_intermediates():
  """On a TPU an array's minor axis is padded to 128 lanes: the bias of a 6x8x8 window must not
  pass through a large intermediate with an 8-wide minor axis (the one-einsum form held
  (heads, 6, 8, 8, 6, 8, 8), 16x its floats, for every TMSA layer's backward)."""
  window = (6, 8, 8)
  table = np.zeros((11 * 15 * 15, 6), np.float32)
  jaxpr = jax.make_jaxpr(lambda t: attention._relative_position_bias_xla(t, window, 384))(table)
  narrow = [v.aval.shape for eqn in jaxpr.eqns for v in eqn.outvars
            if v.aval.size > table.size and v.aval.shape[-1] < 64]
  assert not narrow, narrow
