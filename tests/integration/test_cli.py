"""The command-line tools as a person meets them: short errors, nothing left behind, a workdir
alone naming the model, and the same frames as the one-call API."""

import os
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import pytest
from standins import write_tiny_workdir

from vrt_jax import video

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "JAX_PLATFORMS": "cpu"}


def run(*args, timeout=600):
  start = time.monotonic()
  proc = subprocess.run([sys.executable, *map(str, args)], cwd=REPO, capture_output=True,
                        text=True, timeout=timeout, env=ENV)
  return proc, time.monotonic() - start


def assert_short_error(proc, seconds, *needles):
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert 1 <= len(lines) <= 4, proc.stderr
  assert "Traceback" not in proc.stderr
  assert lines[0].split(":")[1].strip() == "error", proc.stderr
  for needle in needles:
    assert needle in proc.stderr, proc.stderr
  assert seconds < 60  # No model is built or compiled before the error (about 5 s).


def _frames(folder, sizes, seed=0):
  rng = np.random.default_rng(seed)
  folder.mkdir(parents=True)
  for t, (h, w) in enumerate(sizes):
    video.write_image(folder / f"{t:08d}.png", rng.random((h, w, 3), dtype=np.float32))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  return write_tiny_workdir(tmp_path_factory.mktemp("train") / "wd")


RESTORE = ("-m", "vrt_jax.restore")


@pytest.mark.parametrize("case", ["missing_input", "mixed_sizes", "unknown_flag",
                                  "abbreviated_flag", "bad_tile", "unknown_weights"])
def test_restore_user_errors_are_short_and_leave_nothing(tmp_path, workdir, case):
  _frames(tmp_path / "in", [(64, 64)] * 3)
  out = tmp_path / "new" / "out"
  args = ["--weights", workdir, "--input", tmp_path / "in", "--output", out]
  needles = ()
  if case == "missing_input":
    args[3] = tmp_path / "nope"
    needles = ("nope does not exist",)
  elif case == "mixed_sizes":
    _frames(tmp_path / "mixed", [(64, 64), (64, 72)])
    args[3] = tmp_path / "mixed"
    needles = ("00000001.png has size (64, 72)", "same size")
  elif case == "unknown_flag":
    args += ["--tiles", "6,64,64"]
    needles = ("unrecognized arguments: --tiles", "--help")
  elif case == "abbreviated_flag":
    args += ["--tile_over", "2,16,16"]  # argparse would take this for --tile_overlap
    needles = ("unrecognized arguments: --tile_over",)
  elif case == "bad_tile":
    args += ["--tile", "6,60,64"]
    needles = ("spatial tile 60 must be a multiple of window_size[1] = 8",)
  elif case == "unknown_weights":
    args[1] = "007_VRT_videodeblurring_REDZ"
    needles = ("not a released model name", "006_VRT_videodeblurring_GoPro")
  proc, seconds = run(*RESTORE, *args)
  assert_short_error(proc, seconds, *needles)
  assert not (tmp_path / "new").exists()  # Neither the output folder nor its parent.
  assert proc.stdout == "" or "tiling" not in proc.stdout


def test_debug_shows_the_traceback(tmp_path, workdir):
  proc, _ = run(*RESTORE, "--weights", workdir, "--input", tmp_path / "nope", "--output",
                tmp_path / "out", "--debug")
  assert proc.returncode != 0 and "Traceback" in proc.stderr


@pytest.mark.parametrize("argv,needles", [
    (["train.py", "--config", "configs/demo.py", "--workdir", "{tmp}/wd", "--bogus"],
     ("Unknown command line flag 'bogus'",)),
    (["train.py", "--config", "configs/nope.py", "--workdir", "{tmp}/wd"],
     ("config file configs/nope.py does not exist",)),
    (["eval.py", "--config", "configs/demo.py", "--checkpoint", "{tmp}/nope", "--gt", "{tmp}",
      "--sigma", "30", "--output", "{tmp}/wd"], ("has no clip subfolders",)),
    (["eval.py", "--config", "configs/demo.py", "--checkpoint", "{tmp}", "--output",
      "{tmp}/wd"], ("give the noise level with --sigma",)),
    (["-m", "vrt_jax.convert", "tests/data/deblur_params.pth", "--out", "{tmp}/wd"],
     ("not named after a released model: give --preset NAME",)),
    (["-m", "vrt_jax.convert", "{tmp}/006_VRT_videodeblurring_GoPro.pth", "--out", "{tmp}/wd"],
     ("does not exist",)),
])
def test_train_eval_convert_user_errors_are_short(tmp_path, argv, needles):
  proc, seconds = run(*[a.format(tmp=tmp_path) for a in argv])
  assert_short_error(proc, seconds, *needles)
  assert not (tmp_path / "wd").exists()


@pytest.mark.parametrize("name", ["vrt-convert", "vrt-eval", "vrt-restore", "vrt-train"])
def test_console_scripts_run_their_tool(name):
  scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
  module, function = scripts[name].split(":")
  # What the installed script does: import the entry point and call it (here with --help).
  code = f"import sys; sys.argv = [{name!r}, '--help']; from {module} import {function}; " \
         f"{function}()"
  proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                        text=True, env=ENV, timeout=120)
  assert proc.returncode in ((0, 1) if name in ("vrt-train", "vrt-eval") else (0,)), \
      proc.stderr[-3000:]  # absl's --help exits with 1
  assert f"{name} " in proc.stdout + proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_workdir_alone_restores_like_the_one_call_api(tmp_path, workdir):
  import vrt_jax

  _frames(tmp_path / "in", [(64, 72)] * 3, seed=1)
  out = tmp_path / "out"
  proc, _ = run(*RESTORE, "--weights", workdir, "--input", tmp_path / "in", "--output", out)
  assert proc.returncode == 0, proc.stderr[-3000:]
  # The denoiser's noise level comes from the workdir's config, and the tiling is reported.
  assert "--sigma not given: using 30" in proc.stdout
  assert "tiling: 3 frames of 72x64 -> 72x64: 1 temporal x 1 x 1 spatial tile of 3 x 64 x 72" \
      in proc.stdout
  assert "frames/s" in proc.stdout
  assert "Orbax" not in proc.stderr and "orbax" not in proc.stderr
  assert sorted(p.name for p in out.iterdir()) == [f"{t:08d}.png" for t in range(3)]
  cli_frames = np.stack([np.asarray(__import__("PIL.Image").Image.open(p))
                         for p in sorted(out.iterdir())])
  frames = np.stack([np.asarray(__import__("PIL.Image").Image.open(p))
                     for p in sorted((tmp_path / "in").iterdir())])
  restorer = vrt_jax.load(str(workdir))
  api = restorer(frames)
  assert api.dtype == np.uint8 and api.shape == frames.shape
  np.testing.assert_array_equal(api, cli_frames)
  assert restorer.last_tiling == "1 temporal x 1 x 1 spatial tile of 3 x 64 x 72"
  # Float input gives float output; a batch is restored clip by clip; sigma changes the result.
  as_float = restorer(frames[None].astype(np.float32) / 255)
  assert as_float.dtype == np.float32 and as_float.shape == (1, 3, 64, 72, 3)
  np.testing.assert_array_equal(np.round(np.clip(as_float[0], 0, 1) * 255).astype(np.uint8),
                                api)
  assert not np.array_equal(restorer(frames, sigma=10), api)
  assert len(restorer._apply.compiled) == 1  # the fast path, compiled once for both calls
