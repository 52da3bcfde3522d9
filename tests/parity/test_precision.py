"""Mixed precision: `VRT(dtype=jnp.bfloat16)` stays close to the float32 reference output.

Measured on tests/data/parity_deblur.npz (1x6x72x64 deblurring clip, output range about
-0.4..1.5): max |bf16 - reference| 1.3e-2, mean 2.0e-3 (float32: 7e-7). The bounds below leave
about 3x headroom for other CPUs / XLA versions while still catching a float32-only code path
that breaks under bf16 (wrong casts give errors of order 0.1 or NaN).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import parity_utils as pu
from vrt_jax import convert
from vrt_jax.vrt import VRT

NAME = "parity_deblur"
MAX_ABS = 4e-2
MEAN_ABS = 6e-3


@pytest.mark.slow
def test_bfloat16_output_stays_close_to_float32_reference():
  z = pu.load(NAME)
  model = VRT(**pu.config(NAME), dtype=jnp.bfloat16)
  variables = convert.from_torch(pu.params_only(pu.state_dict(NAME)), model)
  # Parameters stay float32 under a bf16 compute dtype.
  assert {a.dtype for a in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
  out = jax.jit(model.apply)(variables, pu.clip(z["input"]))
  assert out.dtype == jnp.float32
  diff = np.abs(np.asarray(out) - pu.clip(z["output"]))
  assert np.isfinite(diff).all()
  assert diff.max() < MAX_ABS, diff.max()
  assert diff.mean() < MEAN_ABS, diff.mean()
  # The option really computes in bf16 (a float32 run is within 1e-6 of the reference).
  assert diff.max() > 1e-4, diff.max()
