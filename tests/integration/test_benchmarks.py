"""The benchmark scripts: their table, and a real run of each on the tiny VRT."""

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


@pytest.mark.slow
@pytest.mark.parametrize("script", ["bench_forward.py", "bench_train.py"])
def test_script_runs_and_prints_table(script):
  cmd = [sys.executable, f"benchmarks/{script}", "--preset", "tiny", "--shape", "1,6,64,64,3",
         "--runs", "1", "--threads", "1"]
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900,
                        env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = [line for line in proc.stdout.splitlines() if line.startswith("| vrt-jax (cpu")]
  assert len(rows) == 1 and "| tiny | 1,6,64,64,3 | float32 |" in rows[0], proc.stdout
  median = float(rows[0].split("|")[6])
  assert median > 0
  assert f"reproduce: python benchmarks/{script} --preset tiny" in proc.stdout
