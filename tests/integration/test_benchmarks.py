"""The benchmark scripts: their table, and a real run of each on the tiny VRT."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

import _common as common  # noqa: E402


def test_table_has_ratio_rows(capsys):
  columns = (("impl", "implementation", ""), ("median_s", "median (s)", "{:.2f}"),
             ("peak_rss_mib", "peak RSS (MiB)", "{:.0f}"))
  ours = dict(impl="vrt-jax", median_s=5.0, peak_rss_mib=900.0)
  ref = dict(impl="ref", median_s=20.0, peak_rss_mib=1200.0)
  common.print_table([ours, ref], columns, ref)
  lines = capsys.readouterr().out.splitlines()
  assert lines[2] == "| vrt-jax | 5.00 | 900 |"
  assert lines[-1] == "| ratio vrt-jax / ref | 0.25x | 0.75x |"


def test_bad_shape_and_failing_worker_are_explained():
  with pytest.raises(ValueError, match="B,T,H,W,C"):
    common.parse_shape("6,64,64")
  with pytest.raises(RuntimeError, match="benchmark worker failed .*boom"):
    common.run_worker([sys.executable, "-c", "import sys; sys.exit('boom')"])


_FAKE_COMPILE = r"""
import json, os, re, sys, time
dump = re.search(r"--xla_dump_to=(\S+)", os.environ["XLA_FLAGS"]).group(1)
print("BENCH_INFO " + json.dumps({"shape": "1x2x64x64x3 on 1 chip"}), flush=True)
def write(name, text):
  with open(os.path.join(dump, name), "w") as f:
    f.write(text)
# The host's own small programs come first and are not the TPU program.
write("module_0000.jit_stage.cpu_after_optimizations-buffer-assignment.txt",
      "allocation 0: size 99999999999, preallocated-temp:\n")
write("module_0000.jit_stage.cpu_after_optimizations-memory-usage-report.txt", "")
time.sleep(1)
write("module_0003.jit_step.after_optimizations-buffer-assignment.txt",
      "allocation 0: size 512, thread-local:\n"
      "allocation 1: size 1073741824, parameter 0, shape |f32[268435456]| at ShapeIndex {}:\n"
      "allocation 2: size 3221225472, preallocated-temp:\n"
      "allocation 3: size 4096, color 4, preallocated-temp:\n")
write("module_0003.jit_step.after_optimizations-memory-usage-report.txt", "")
time.sleep(600)  # Code generation, which --until_buffers does not wait for.
"""


def test_tpu_compile_stops_at_buffer_assignment_and_reads_it(tmp_path):
  import time

  import tpu_compile

  worker = tmp_path / "fake_compile.py"
  worker.write_text(_FAKE_COMPILE)
  start = time.perf_counter()
  row = tpu_compile.until_buffer_assignment(
      [sys.executable, str(worker)], dict(os.environ, XLA_FLAGS=""), timeout=120,
      row={"program": "train", "hbm_gib": 3.5})
  assert time.perf_counter() - start < 60  # Stopped, not waited for.
  assert row["temp_gib"] == pytest.approx(3.0) and row["argument_gib"] == pytest.approx(1.0)
  assert row["fits"] == "no (buffers)" and row["shape"] == "1x2x64x64x3 on 1 chip"
  # dump_dir keeps the dump (its memory-usage report) for reading afterwards.
  kept = tmp_path / "dump"
  row = tpu_compile.until_buffer_assignment(
      [sys.executable, str(worker)], dict(os.environ, XLA_FLAGS=""), timeout=120,
      row={"program": "train", "hbm_gib": 3.5}, dump_dir=str(kept))
  assert row["temp_gib"] == pytest.approx(3.0)
  assert list(kept.glob("*after_optimizations-buffer-assignment.txt"))
  # A worker that fails before its buffer assignment is reported with its output.
  worker.write_text("import sys; print('no libtpu here'); sys.exit(3)")
  with pytest.raises(RuntimeError, match=r"(?s)exit 3.*no libtpu here"):
    tpu_compile.until_buffer_assignment([sys.executable, str(worker)], dict(os.environ),
                                        timeout=60, row={})


@pytest.mark.slow
@pytest.mark.parametrize("script", ["bench_forward.py", "bench_train.py"])
def test_script_runs_and_prints_table(script):
  cmd = [sys.executable, f"benchmarks/{script}", "--preset", "tiny", "--shape", "1,2,64,64,3",
         "--runs", "1", "--threads", "1"]
  # One run: XLA's CPU optimisation passes would cost more compile time than they save.
  flags = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900,
                        env={**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": flags})
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = [line for line in proc.stdout.splitlines() if line.startswith("| vrt-jax (cpu")]
  assert len(rows) == 1 and "| tiny | 1,2,64,64,3 | float32 |" in rows[0], proc.stdout
  median = float(rows[0].split("|")[6])
  assert median > 0
  assert f"reproduce: python benchmarks/{script} --preset tiny" in proc.stdout


def test_all_gathers_are_read_from_hlo():
  import space_hlo

  hlo = "\n".join([
      '  %a = f32[2,64,64,16]{3,2,0,1} all-gather(f32[2,32,64,16]{3,2,0,1} %x), '
      'metadata={op_name="jit(step)/stage1/shard_map/cond/halo_fallback/all_gather"}',
      '  %b = f32[1,2,8,8,24]{4,3,2,1,0} all-gather(f32[1,2,4,8,24] %y), '
      'metadata={op_name="jit(step)/stage8/attention_part/reshape"}',
      '  %c = bf16[2,64,64,3]{3,2,1,0} all-gather(bf16[2,32,64,3] %z)',
      '  %d = f32[2,64,64,16]{3,2,0,1} add(f32[2,64,64,16] %p, f32[2,64,64,16] %q)'])
  got = space_hlo.all_gathers(hlo, [(64, 64)])
  assert [(g["dims"], g["fallback"], g["full_res"]) for g in got] == [
      ((2, 64, 64, 16), True, True), ((1, 2, 8, 8, 24), False, False),
      ((2, 64, 64, 3), False, True)]
  assert got[0]["mib"] == 2 * 64 * 64 * 16 * 4 / 2**20  # float32
  assert got[2]["mib"] == 2 * 64 * 64 * 3 * 2 / 2**20  # bfloat16


@pytest.mark.slow
def test_split_training_step_gathers_no_full_resolution_activation(tmp_path):
  """The demo's training step with each clip's rows over 2 devices: activations stay split
  (every full-resolution all-gather is a halo fallback) and each device holds less."""
  out = tmp_path / "space.json"
  proc = subprocess.run([sys.executable, "benchmarks/space_hlo.py", "--space", "2",
                         "--json", str(out)], cwd=REPO, capture_output=True, text=True,
                        timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "| space |" in proc.stdout and "python benchmarks/space_hlo.py" in proc.stdout
  (row,) = json.loads(out.read_text())
  assert row["space"] == 2 and row["full_res"] == 0
  assert all(g["fallback"] for g in row["gathers"] if g["full_res"])
  assert row["fallback"] > 0 and row["permutes"] > 0  # Halo exchanges, fallbacks compiled in.


def test_matmul_precision_emulation_rounds_as_a_tpu_does():
  import jax
  import jax.numpy as jnp
  import matmul_precision
  import numpy as np

  from vrt_jax import kernels

  rng = np.random.default_rng(0)
  a, b = (jnp.asarray(rng.standard_normal((32, 64)), jnp.float32),
          jnp.asarray(rng.standard_normal((64, 16)), jnp.float32))
  exact = np.asarray(a, np.float64) @ np.asarray(b, np.float64)
  bf = lambda x: np.asarray(jnp.asarray(x).astype(jnp.bfloat16), np.float64)  # noqa: E731
  hi_a, hi_b = bf(a), bf(b)
  lo_a, lo_b = bf(np.asarray(a) - hi_a), bf(np.asarray(b) - hi_b)
  want = {"default": hi_a @ hi_b, "high": hi_a @ hi_b + hi_a @ lo_b + lo_a @ hi_b,
          "highest": exact}

  # A matmul in a scan in a while loop in a cond, a convolution, and a one-hot matmul (an exact
  # gather) under jax.checkpoint.
  def f(x, y):
    def body(c, _):
      return c, x @ y
    loop = lambda x: jax.lax.while_loop(lambda c: c[0] < 1, lambda c: (c[0] + 1, jax.lax.scan(
        body, 0.0, None, length=2)[1][1]), (0, jnp.zeros((32, 16))))[1]  # noqa: E731
    conv = jax.lax.conv_general_dilated(x[None, :, :, None], y[:3, :3, None, None], (1, 1),
                                        "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    onehot = jax.checkpoint(lambda x: jnp.dot(x, jnp.eye(64)[:, :5],
                                              precision=jax.lax.Precision.HIGHEST))(x)
    return jax.lax.cond(True, loop, lambda x: x[:, :16], x), conv, onehot

  errors = {}
  for setting in kernels.MATMUL_PRECISIONS:
    with kernels.matmul_precision(setting):
      out, conv, onehot = jax.jit(matmul_precision.emulated(f))(a, b)
    np.testing.assert_allclose(out, want[setting], rtol=0, atol=1e-4)
    np.testing.assert_array_equal(onehot, np.asarray(a)[:, :5])  # HIGHEST asked: exact.
    errors[setting] = np.abs(np.asarray(out, np.float64) - exact).max()
    one_pass = bf if setting == "default" else lambda x: np.asarray(x, np.float64)
    taps, image = one_pass(np.asarray(b)[:3, :3]), one_pass(a)
    want_conv = sum(image[i:i + 30, j:j + 62] * taps[i, j] for i in range(3) for j in range(3))
    np.testing.assert_allclose(conv[0, :, :, 0], want_conv, rtol=0, atol=1e-4)
  # One bfloat16 pass is far off float32; three passes come close; six are float32.
  assert errors["default"] > 1e-2 > 1e-3 > errors["high"] and errors["highest"] < 1e-4

