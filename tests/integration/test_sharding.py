"""Data parallelism: mesh and batch placement; 1 device, 8 fake devices and 2 processes agree."""

import os
import socket
import subprocess

import jax
import ml_collections
import numpy as np
import pytest
from test_train import REPO, losses, run_train, train_cmd, train_env

from vrt_jax import sharding


def test_mesh_and_global_batch_on_local_devices():
  config = ml_collections.ConfigDict(dict(batch_size=4, num_devices=0))
  mesh = sharding.make_mesh(config)
  assert mesh.axis_names == (sharding.DATA_AXIS,)
  assert mesh.devices.size == jax.device_count()
  local = {"lq": np.arange(4 * 3, dtype=np.float32).reshape(4, 3)}
  batch = sharding.make_global_batch(local, mesh)
  assert batch["lq"].shape == (4, 3)
  assert batch["lq"].sharding.spec == jax.sharding.PartitionSpec(sharding.DATA_AXIS)
  np.testing.assert_array_equal(np.asarray(batch["lq"]), local["lq"])


def test_mesh_rejects_more_devices_than_exist():
  config = ml_collections.ConfigDict(dict(batch_size=8, num_devices=jax.device_count() + 1))
  with pytest.raises(ValueError, match="only .* devices exist"):
    sharding.make_mesh(config)


EIGHT = ("--config.batch_size=8", "--config.total_steps=2", "--config.checkpoint_every=2")


def test_one_and_eight_devices_give_the_same_losses(tmp_path):
  one, eight = str(tmp_path / "one"), str(tmp_path / "eight")
  run_train(one, *EIGHT, num_devices=1)
  run_train(eight, *EIGHT, num_devices=8)
  a, b = losses(one), losses(eight)
  assert a.keys() == b.keys() == {1, 2}
  np.testing.assert_allclose([b[s] for s in a], [a[s] for s in a], rtol=1e-5)


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_train_as_one_run(tmp_path):
  """Two processes x 4 fake CPU devices (gloo over loopback) form one 8-device run.

  Each process loads its own shard of the data, so the batches (and losses) differ from a
  single-process run's; what must hold is one run: one metrics writer, one checkpoint holding
  both processes' data-iterator states, and a resumable result.
  """
  multi = str(tmp_path / "multi")
  port = _free_port()
  procs = [subprocess.Popen(
      train_cmd(multi, *EIGHT, f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                f"--process_id={pid}"),
      cwd=REPO, env=train_env(4), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for pid in range(2)]
  for p in procs:
    _, err = p.communicate(timeout=900)
    assert p.returncode == 0, err[-5000:]
  got = losses(multi)
  assert sorted(got) == [1, 2] and all(np.isfinite(v) for v in got.values())
  with open(os.path.join(multi, "metrics.jsonl")) as f:
    assert len(f.readlines()) == 2  # Only process 0 writes.
  data_dir = os.path.join(multi, "checkpoints", "2", "data")
  assert {"process_0-of-2.json", "process_1-of-2.json"} <= set(os.listdir(data_dir))
