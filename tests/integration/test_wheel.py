"""The built wheel, installed in a fresh venv, works outside the source tree.

Builds the wheel (`pip wheel --no-deps`), installs it with its dependencies from PyPI (pinned by
constraints.txt; pip's cache makes this ~20-40 s) into a new venv, and runs the console scripts,
a tiny restore (a real tiny VRT, an mp4 with audio) and a tiny export from a temporary directory,
so that the installed package, not the checkout, is what runs.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
from standins import make_video, write_tiny_setup

REPO = Path(__file__).resolve().parents[2]


def run(args, cwd, env, timeout=600):
  proc = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True,
                        timeout=timeout)
  assert proc.returncode == 0, f"{args} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
  return proc.stdout


@pytest.mark.slow
def test_wheel_in_a_fresh_venv_restores_and_exports(tmp_path):
  env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
  env["JAX_PLATFORMS"] = "cpu"
  # Built from a clean copy: setuptools builds in the source tree, and a stale build/ there could
  # put files in the wheel that the package no longer has.
  source = tmp_path / "source"
  shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
      ".git", "build", "dist", "*.egg-info", ".*venv*", "venv", "__pycache__", ".pytest_cache",
      ".ruff_cache", "workdir*", "results", "tests"))  # tests/data: 67 MB of goldens
  run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", tmp_path / "dist", source],
      cwd=tmp_path, env=env)
  (wheel,) = (tmp_path / "dist").glob("vrt_jax-*.whl")
  run([sys.executable, "-m", "venv", tmp_path / "venv"], cwd=tmp_path, env=env)
  bin_dir = tmp_path / "venv" / "bin"
  python = bin_dir / "python"
  run([python, "-m", "pip", "install", "-q", "-c", REPO / "constraints.txt", wheel],
      cwd=tmp_path, env=env, timeout=900)

  work = tmp_path / "work"  # Outside the checkout: only the installed package can be imported.
  work.mkdir()
  where = run([python, "-c", "import vrt_jax, configs; print(vrt_jax.__file__); "
               "print(configs.__path__[0])"], cwd=work, env=env).split()
  assert all(str(tmp_path / "venv") in w for w in where), where
  # The configs ship with the package and load there (`from configs import common` included).
  run([python, "-c", "from configs import demo, deblur; demo.get_config(); deblur.get_config()"],
      cwd=work, env=env)

  assert "StableHLO" in run([bin_dir / "vrt-export", "--help"], cwd=work, env=env)
  assert "--pix_fmt" in run([bin_dir / "vrt-restore", "--help"], cwd=work, env=env)
  assert "--pix_fmt" in run([python, "-m", "vrt_jax.restore", "--help"], cwd=work, env=env)
  assert "--preset" in run([bin_dir / "vrt-convert", "--help"], cwd=work, env=env)

  _, weights = write_tiny_setup(tmp_path)
  rng = np.random.default_rng(0)
  make_video(work / "in.mp4", rng.random((3, 64, 64, 3), dtype=np.float32))
  out = run([python, "-m", "vrt_jax.restore", "in.mp4", "out.mp4", "--weights", weights,
             "--tile", "0,0,0", "--tile_overlap", "0,0,0"], cwd=work, env=env)
  assert "3 frames written" in out and "audio copied (aac)" in out, out
  with av.open(str(work / "out.mp4")) as container:
    assert container.streams.video[0].frames == 3 and container.streams.audio

  run([bin_dir / "vrt-export", "exported", "--weights", weights, "--shape", "1,2,64,64"],
      cwd=work, env=env)
  sidecar = json.loads((work / "exported" / "export.json").read_text())
  assert sidecar["input_shape"] == [1, 2, 64, 64, 3] and sidecar["params"] == "baked"
  assert (work / "exported" / "forward.jax_export").stat().st_size > 0
