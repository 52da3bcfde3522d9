"""Shared test setup."""

import os
import tempfile

# Many tests (and the training runs they start as subprocesses) compile the same tiny VRT:
# share compiled programs through JAX's persistent cache. Set before jax is imported anywhere.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), "vrt-jax-test-compile-cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "2")
# Downloads, converted weights and restore records go to a throwaway cache, never the user's.
os.environ["VRT_JAX_CACHE"] = tempfile.mkdtemp(prefix="vrt-jax-test-cache-")

import pytest  # noqa: E402
from absl import flags  # noqa: E402

# grain reads absl flags in its worker processes; tests do not go through absl.app.run.
flags.FLAGS.mark_as_parsed()


@pytest.fixture(params=["cpu", "xla"])
def kernel_choice(request, monkeypatch):
  """Runs a test on each implementation of the kernels (vrt_jax.kernels), both on this CPU."""
  import jax

  from vrt_jax import kernels

  monkeypatch.setenv(kernels.KERNELS_ENV, request.param)
  jax.clear_caches()  # Traces made under the other choice must not be reused.
  yield request.param
  jax.clear_caches()
