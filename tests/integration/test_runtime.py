"""Process set-up of the entry points (vrt_jax.runtime), and that importing vrt_jax sets none."""

import logging
import os
import subprocess
import sys

from vrt_jax import runtime


def test_importing_vrt_jax_changes_nothing_global():
  # Every library module, imported in a fresh process: no environment variable, JAX option,
  # logger level or restart may come of it (the entry points, vrt_jax/_*_main.py, opt in via
  # runtime; they are programs, and define their absl flags on import).
  script = (
      "import os, sys, logging, pkgutil, importlib\n"
      "print('start', flush=True)\n"
      # OpenCV, which tensorflow_datasets imports, adds its lib dir to LD_LIBRARY_PATH: not ours.
      "import jax, tensorflow_datasets\n"
      "env = dict(os.environ)\n"
      "cache = jax.config.jax_compilation_cache_dir\n"
      "names = ('absl', 'orbax', 'grain', 'etils', 'jax._src.xla_bridge')\n"
      "levels = {n: (logging.getLogger(n).level, len(logging.getLogger(n).filters)) "
      "for n in names}\n"
      "import vrt_jax\n"
      "mods = [m.name for m in pkgutil.walk_packages(vrt_jax.__path__, 'vrt_jax.')\n"
      "        if not m.name.endswith('_main')]\n"
      "for m in mods:\n"
      "  importlib.import_module(m)\n"
      "vrt_jax.convert, vrt_jax.load\n"
      "assert dict(os.environ) == env, set(os.environ.items()) ^ set(env.items())\n"
      "assert jax.config.jax_compilation_cache_dir == cache, jax.config.jax_compilation_cache_dir\n"
      "now = {n: (logging.getLogger(n).level, len(logging.getLogger(n).filters)) for n in names}\n"
      "assert now == levels, (now, levels)\n"
      "print('imported', len(mods))\n")
  env = {k: v for k, v in os.environ.items()
         if k not in ("GLIBC_TUNABLES", runtime.KEEP_MALLOC_ENV, "JAX_COMPILATION_CACHE_DIR",
                      runtime.CACHE_ENV)}
  proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = proc.stdout.splitlines()
  assert lines.count("start") == 1, lines  # not restarted
  assert lines[-1].startswith("imported ") and int(lines[-1].split()[1]) > 25, lines


def test_quiet_logs_while_restores_the_loggers(monkeypatch):
  monkeypatch.delenv("VRT_JAX_VERBOSE", raising=False)
  orbax, absl = logging.getLogger("orbax"), logging.getLogger("absl")
  monkeypatch.setattr(orbax, "level", logging.DEBUG)
  monkeypatch.setattr(absl, "filters", [])
  with runtime.quiet_logs_while():
    assert orbax.level == logging.WARNING and len(absl.filters) == 1
  assert orbax.level == logging.DEBUG and absl.filters == []


def test_huge_pages_env_adds_the_tunable_once_and_respects_the_user(monkeypatch):
  monkeypatch.setattr(runtime, "_huge_pages_available", lambda: True)
  base = {"PATH": "/bin"}
  assert runtime.huge_pages_env(base) == {**base, "GLIBC_TUNABLES": runtime.HUGE_PAGES_TUNABLE}
  other = {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}
  assert runtime.huge_pages_env(other)["GLIBC_TUNABLES"] == (
      "glibc.malloc.arena_max=2:" + runtime.HUGE_PAGES_TUNABLE)
  chosen = {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}
  assert runtime.huge_pages_env(chosen) == chosen
  kept = {runtime.KEEP_MALLOC_ENV: "1"}
  assert runtime.huge_pages_env(kept) == kept
  monkeypatch.setattr(runtime, "_huge_pages_available", lambda: False)
  assert runtime.huge_pages_env(base) == base


def test_reexec_with_huge_pages_restarts_once_with_the_tunable():
  code = ("import os, sys; print('start', flush=True); from vrt_jax import runtime; "
          "runtime.reexec_with_huge_pages(); print('tunables', os.environ.get('GLIBC_TUNABLES'))")
  env = {k: v for k, v in os.environ.items()
         if k not in ("GLIBC_TUNABLES", runtime.KEEP_MALLOC_ENV)}
  proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                        timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]
  lines = proc.stdout.splitlines()
  expected = runtime.huge_pages_env(env).get("GLIBC_TUNABLES")
  # Restarted (the first line printed twice) exactly where the tunable applies.
  assert lines.count("start") == (2 if expected else 1), lines
  assert lines[-1] == f"tunables {expected}"


def test_entry_points_keep_compiled_programs_between_runs(tmp_path):
  # runtime.enable_compilation_cache: a second process loads the first one's program.
  script = (
      "import jax, jax.numpy as jnp\n"
      "from vrt_jax import runtime\n"
      "print(runtime.enable_compilation_cache())\n"
      "jax.monitoring.register_event_listener(lambda name, **_: print(name))\n"
      "jax.jit(lambda x: jnp.sin(x) @ x.T)(jnp.ones((64, 64))).block_until_ready()\n")
  env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
  env.update(XDG_CACHE_HOME=str(tmp_path), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PLATFORMS="cpu")
  first = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                         text=True, check=True)
  cache = tmp_path / "vrt-jax" / "xla"
  hit = "/jax/compilation_cache/cache_hits"
  assert first.stdout.splitlines()[0] == str(cache) and hit not in first.stdout
  assert any(cache.iterdir()), "nothing was cached"
  second = subprocess.run([sys.executable, "-c", script], env=env, check=True,
                          capture_output=True, text=True)
  assert hit in second.stdout
  env[runtime.CACHE_ENV] = str(tmp_path / "elsewhere")
  out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                       check=True)
  assert out.stdout.splitlines()[0] == str(tmp_path / "elsewhere") and hit not in out.stdout
