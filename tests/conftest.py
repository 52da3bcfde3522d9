"""Shared test setup."""

import os

# Tests run on a 2-core CPU; keep XLA from oversubscribing it.
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=true")

from absl import flags  # noqa: E402

# grain reads absl flags in its worker processes; tests do not go through absl.app.run.
flags.FLAGS.mark_as_parsed()
