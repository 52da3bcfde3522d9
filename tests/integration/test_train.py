"""The training loop end to end: train.py in subprocesses, kill -9 and resume, NaN handling."""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Compiled programs are shared between the subprocesses of a test session (and later sessions):
# a resumed run then starts in seconds instead of recompiling.
XLA_CACHE = os.path.join(tempfile.gettempdir(), "vrt_jax_test_xla_cache")
# A short schedule; for the demo config (real VRT, tiny), 2-frame clips of 64x64.
BASE_FLAGS = ("--config.total_steps=6", "--config.batch_size=2", "--config.log_every=1",
              "--config.checkpoint_every=2", "--config.eval_every=-1",
              "--config.data.synthetic_clips=8", "--config.data.val_clips=1")
DEMO_FLAGS = ("--config.data.num_frames=2",)


def train_cmd(workdir, *flags, config="configs/demo.py"):
  demo = DEMO_FLAGS if config == "configs/demo.py" else ()
  return [sys.executable, os.path.join(REPO, "train.py"), f"--config={config}",
          f"--workdir={workdir}", *BASE_FLAGS, *demo, *flags]


def train_env(num_devices=1, **extra):
  env = dict(os.environ)
  # Few steps: XLA's CPU optimisation passes would cost more compile time than they save.
  env["XLA_FLAGS"] = (f"--xla_force_host_platform_device_count={num_devices} "
                      "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true")
  env["JAX_COMPILATION_CACHE_DIR"] = XLA_CACHE
  env["JAX_PLATFORMS"] = "cpu"
  env.update(extra)
  return env


def run_train(workdir, *flags, num_devices=1, timeout=900, check=True, config="configs/demo.py",
              **env):
  proc = subprocess.run(train_cmd(workdir, *flags, config=config), cwd=REPO,
                        env=train_env(num_devices, **env), capture_output=True, text=True,
                        timeout=timeout)
  if check and proc.returncode:
    raise AssertionError(f"train.py failed ({proc.returncode}):\n{proc.stderr[-5000:]}")
  return proc


def read_metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def losses(workdir):
  return {r["step"]: r["loss"] for r in read_metrics(workdir) if "loss" in r}


def test_train_writes_metrics_checkpoints_and_validation(tmp_path):
  wd = str(tmp_path / "run")
  proc = run_train(wd, "--config.total_steps=3", "--config.eval_every=0")
  records = read_metrics(wd)
  assert [r["step"] for r in records] == [1, 2, 3]
  for r in records:
    assert {"step", "loss", "lr", "steps_per_sec"} <= set(r)
    assert np.isfinite(r["loss"]) and r["lr"] > 0
  assert "val_psnr" in records[-1] and "val_psnr_input" in records[-1]
  assert "Validation PSNR at step 3" in proc.stdout
  assert sorted(os.listdir(os.path.join(wd, "checkpoints"))) == ["2", "3"]
  assert os.listdir(os.path.join(wd, "samples")) == ["step_0000003.png"]
  events = os.listdir(os.path.join(wd, "tensorboard"))
  assert any(f.startswith("events.out.tfevents") for f in events)


def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path):
  ref = str(tmp_path / "ref")
  run_train(ref)

  wd = str(tmp_path / "killed")
  proc = subprocess.Popen(train_cmd(wd), cwd=REPO, env=train_env(), stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  # Orbax renames a checkpoint to its final name only once it is complete.
  marker = os.path.join(wd, "checkpoints", "2", "_CHECKPOINT_METADATA")
  deadline = time.time() + 900
  while not os.path.exists(marker):
    assert proc.poll() is None, "train.py exited before its first checkpoint"
    assert time.time() < deadline, "no checkpoint after 900 s"
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  # The kill landed mid-run (several steps of seconds each were left), not after the end.
  assert max(losses(wd)) < 6

  run_train(wd)
  records = read_metrics(wd)
  steps = [r["step"] for r in records]
  assert steps == sorted(set(steps)) == [1, 2, 3, 4, 5, 6]  # No duplicates after resuming.
  ref_losses, got = losses(ref), losses(wd)
  assert got.keys() == ref_losses.keys()
  np.testing.assert_allclose([got[s] for s in steps], [ref_losses[s] for s in steps], rtol=1e-6)

  import vrt_jax
  from vrt_jax import checkpoint

  model = vrt_jax.VRT(**_demo_model())
  jax.tree.map(np.testing.assert_array_equal, checkpoint.load_params(wd, model),
               checkpoint.load_params(ref, model))


def _demo_model():
  sys.path.insert(0, REPO)
  from configs import demo
  return demo.get_config().model.to_dict()


def test_nan_loss_stops_and_names_step_and_last_checkpoint(tmp_path):
  wd = str(tmp_path / "nan")
  # lr 1e30 blows the weights up within a few steps.
  proc = run_train(wd, "--config.optim.lr=1e30", "--config.optim.lr_eta_min=1e30", check=False)
  assert proc.returncode != 0
  assert "FloatingPointError" in proc.stderr
  msg = [line for line in proc.stderr.splitlines() if "Last good checkpoint" in line][-1]
  bad_step = int(msg.split(" at step ")[1].split(";")[0])
  saved = sorted(int(d) for d in os.listdir(os.path.join(wd, "checkpoints")) if d.isdigit())
  assert all(s < bad_step for s in saved)  # Nothing after the NaN is saved.
  if saved:
    assert f"step {saved[-1]} in" in msg
  assert all(r["step"] < bad_step for r in read_metrics(wd))


@pytest.mark.slow
def test_frozen_params_unchanged_before_fix_iter(tmp_path):
  """SpyNet and DCN weights stay at their initial values until fix_iter, then move."""
  import vrt_jax
  from vrt_jax import checkpoint

  model = vrt_jax.VRT(**_demo_model())
  wd = str(tmp_path / "freeze")
  flags = ("--config.optim.fix_keys=('spynet','deform')", "--config.optim.fix_iter=2",
           "--config.max_to_keep=5", "--config.total_steps=3")
  run_train(wd, *flags, "--config.checkpoint_every=1")
  p = {step: checkpoint.load_params(wd, model, step=step) for step in (1, 2, 3)}

  def changed(a, b, select):
    return [not np.array_equal(x, y) for path, x, y in _leaves(a, b) if select(path)]

  fixed = lambda path: "spynet" in path or "deform" in path
  assert any(changed(p[1], p[2], lambda path: not fixed(path)))
  assert not any(changed(p[1], p[2], fixed))  # Update 2 (step < fix_iter): frozen.
  assert any(changed(p[2], p[3], fixed))      # Update 3: released.


def _leaves(a, b):
  fa = jax.tree_util.tree_leaves_with_path(a)
  fb = jax.tree.leaves(b)
  return [(jax.tree_util.keystr(path), x, y) for (path, x), y in zip(fa, fb, strict=True)]


@pytest.mark.slow
def test_a_run_saved_with_per_block_layout_resumes_in_it_under_the_scanned_default(tmp_path):
  """Workdirs written before the TMSA blocks were scanned by default (or with scan_blocks
  False) resume in their own layout: the same losses as an uninterrupted per-block run."""
  cfg = tmp_path / "per_block.py"
  cfg.write_text("from configs import demo\n\n\ndef get_config():\n  config = demo.get_config()\n"
                 "  config.model.scan_blocks = False\n  return config\n")
  ref, wd = str(tmp_path / "ref"), str(tmp_path / "run")
  run_train(ref, "--config.total_steps=4", *DEMO_FLAGS, config=str(cfg))
  run_train(wd, "--config.total_steps=2", *DEMO_FLAGS, config=str(cfg))
  proc = run_train(wd, "--config.total_steps=4")  # The demo config: scanned by default.
  assert "resuming with scan_blocks=False" in proc.stderr, proc.stderr[-3000:]
  # The changed settings are named, not resumed silently.
  assert "was trained with another config" in proc.stderr
  assert "model.scan_blocks: False -> (unset)" in proc.stderr
  assert "total_steps: 2 -> 4" in proc.stderr
  got, want = losses(wd), losses(ref)
  assert sorted(got) == [1, 2, 3, 4]
  np.testing.assert_allclose([got[s] for s in (3, 4)], [want[s] for s in (3, 4)], rtol=1e-6)
