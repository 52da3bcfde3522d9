"""Data and spatial parallelism: mesh and batch placement; 1 device, 8 fake devices (data only,
or 4 data x 2 space) and 2 processes agree."""

import os
import socket
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest
from test_train import REPO, losses, run_train, train_cmd, train_env

from vrt_jax import sharding


def test_mesh_and_global_batch_on_local_devices():
  config = ml_collections.ConfigDict(dict(batch_size=4, num_devices=0))
  mesh = sharding.make_mesh(config)
  assert mesh.axis_names == (sharding.DATA_AXIS, sharding.SPACE_AXIS)
  assert dict(mesh.shape) == {sharding.DATA_AXIS: jax.device_count(), sharding.SPACE_AXIS: 1}
  local = {"lq": np.arange(4 * 2 * 8 * 3 * 1, dtype=np.float32).reshape(4, 2, 8, 3, 1)}
  batch = sharding.make_global_batch(local, mesh)
  assert batch["lq"].shape == (4, 2, 8, 3, 1)
  assert batch["lq"].sharding.spec == sharding.CLIP_SPEC
  np.testing.assert_array_equal(np.asarray(batch["lq"]), local["lq"])


def check_space_meshes():
  """Mesh and batch checks that need 8 devices: run by the test below in a subprocess."""
  assert jax.device_count() == 8
  for space in (3, 16, 0, -2):
    config = ml_collections.ConfigDict(dict(batch_size=8, num_devices=0, mesh=dict(space=space)))
    with pytest.raises(ValueError, match="must be a divisor of the 8 devices"):
      sharding.make_mesh(config)
  config = ml_collections.ConfigDict(dict(batch_size=3, num_devices=4, mesh=dict(space=2)))
  with pytest.raises(ValueError, match="not divisible by the 2 devices of the data axis"):
    sharding.make_mesh(config)
  for space in (1, 2, 4, 8):
    config = ml_collections.ConfigDict(dict(batch_size=8 // space, num_devices=0,
                                            mesh=dict(space=space)))
    mesh = sharding.make_mesh(config)
    assert dict(mesh.shape) == {sharding.DATA_AXIS: 8 // space, sharding.SPACE_AXIS: space}
    assert sharding.space_size(mesh) == space
    # A clip's devices are consecutive ones (one host's on a pod).
    assert [d.id for d in mesh.devices[0]] == list(range(space))
    # Rows split in bands over the space axis, clips over the data axis.
    local = {"lq": np.random.default_rng(0).random((8 // space, 2, 64, 8, 3), np.float32)}
    batch = sharding.make_global_batch(local, mesh)
    assert {s.data.shape for s in batch["lq"].addressable_shards} == {(1, 2, 64 // space, 8, 3)}
    np.testing.assert_array_equal(np.asarray(batch["lq"]), local["lq"])
    # Each band holds whole rows of VRT's coarsest (1/8) scale, or the split is refused.
    for h in (8 * space, 16 * space, 8 * space + 8, 8 * space + 4):
      if h % (8 * space) == 0 or space == 1:
        sharding.check_space_split(mesh, (1, 2, h, 64, 3))
      else:
        with pytest.raises(ValueError, match=f"multiple of {8 * space}"):
          sharding.check_space_split(mesh, (1, 2, h, 64, 3))
    # Restoring: one clip over `space` devices, or (evaluating a test set) clips spread over
    # the remaining devices; validation takes at most one group of devices per clip.
    assert dict(sharding.space_mesh(space).shape) == {"data": 1, "space": space}
    assert sharding.data_size(sharding.space_mesh(space, spread=True)) == 8 // space
    val = sharding.local_mesh(mesh, max_data=2)
    assert dict(val.shape) == {"data": min(2, 8 // space), "space": space}
    assert [d.id for d in val.devices.flat] == list(range(val.size))
  assert sharding.data_size(sharding.space_mesh(3, spread=True)) == 2  # 6 of the 8 devices.
  assert sharding.data_size(None) == 1


def check_halo_exchange():
  """Warps, deformable sampling and resizing with the rows split over 4 devices: the same
  values and gradients as on one device, whether the reach stays inside the halo or not.
  Run by the test below in a subprocess (4 devices)."""
  import functools

  import jax.numpy as jnp
  from jax.sharding import NamedSharding, PartitionSpec

  from vrt_jax import deform, spatial, warp

  mesh = sharding.space_mesh(4)
  rows = NamedSharding(mesh, PartitionSpec(None, sharding.SPACE_AXIS))
  rng = np.random.default_rng(0)
  h, w = 32, 24  # Bands of 8 rows: halos of min(HALO_ROWS, 8) = 8 rows.
  img = rng.random((2, h, w, 6), np.float32)

  def check(fn, *args):
    want = fn(*args)
    split = jax.jit(spatial.traced_under(mesh, fn), in_shardings=(rows,) * len(args))
    got = split(*args)
    assert got.sharding.spec[1] == sharding.SPACE_AXIS  # The output stays split.
    hlo = split.lower(*args).compile().as_text()
    assert "collective-permute" in hlo and "halo_fallback" in hlo  # Halos, and the fallback.
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-5)
    loss = lambda *a: jnp.sum(jnp.sin(fn(*a)))  # noqa: E731
    want_g = jax.grad(loss, argnums=tuple(range(len(args))))(*args)
    got_g = jax.jit(jax.grad(spatial.traced_under(mesh, loss), argnums=tuple(range(len(args)))),
                    in_shardings=(rows,) * len(args))(*args)
    for a, b in zip(got_g, want_g, strict=True):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-4)

  # A flow within the halo (no gather of the frame) and one reaching 3 bands away (fallback:
  # one whole frame at a time here, so its loop over frames runs).
  from unittest import mock

  # The second also samples one row per step (deform._COLUMN_BYTES), in bands and fallback.
  for reach, small in ((3.0, False), (20.0, True)):
    with (mock.patch.object(spatial, "FALLBACK_BYTES", 1 if small else spatial.FALLBACK_BYTES),
          mock.patch.object(deform, "_COLUMN_BYTES", 1 if small else deform._COLUMN_BYTES)):
      flow = ((rng.random((2, h, w, 2)) - 0.5) * 2 * reach).astype(np.float32)
      check(warp.flow_warp, img, flow)
      check(functools.partial(warp.flow_warp, padding_mode="border"), img, flow)
      check(warp.nearest4_warp, img, flow)
      dg = 2
      offset = ((rng.random((2, h, w, dg * 18)) - 0.5) * 2 * reach).astype(np.float32)
      mask = rng.random((2, h, w, dg * 9), np.float32)
      kernel = rng.standard_normal((3, 3, 6, 4)).astype(np.float32) * 0.1
      bias = rng.standard_normal(4).astype(np.float32)
      check(functools.partial(_deform_conv, kernel=kernel, bias=bias, dg=dg), img, offset, mask)
  # Resizing: bands of the output from bands of the input (2x up, align_corners, and down).
  check(lambda x: warp.resize_bilinear(x, (2 * h, 2 * w), align_corners=True), img)
  check(lambda x: warp.resize_bilinear(x, (h // 2, w // 2)), img)
  check(lambda x: warp.resize_bilinear(x, (2 * h, w // 2)), img)

  # On a 2 data x 2 space mesh the bands are manual over both axes: the leading dim split over
  # 'data' where it divides (2), each data device computing all of it where it does not (3).
  mesh = sharding.grid_mesh(jax.devices()[:4], 2)
  for n in (2, 3):
    x, flow = img[:1].repeat(n, 0), ((rng.random((n, h, w, 2)) - 0.5) * 6).astype(np.float32)
    spec = PartitionSpec(sharding.DATA_AXIS if n == 2 else None, sharding.SPACE_AXIS)
    split = jax.jit(spatial.traced_under(mesh, warp.flow_warp),
                    in_shardings=(NamedSharding(mesh, spec),) * 2)
    np.testing.assert_allclose(np.asarray(split(x, flow)), np.asarray(warp.flow_warp(x, flow)),
                               atol=2e-5)


def check_window_attention():
  """TMSA's window attention with the window rows split over 'space' and the clips over 'data'
  (2 x 2 devices), with several frame windows and shifted-window masks, and the deformable
  convolution's loop over frames split over 'data': the one-device values (and gradients), and
  no all-gather (each device works on its own windows and frames). Run by the test below in a
  subprocess (4 devices)."""
  import jax.numpy as jnp
  from jax.sharding import NamedSharding, PartitionSpec

  from vrt_jax import attention, spatial

  mesh = sharding.grid_mesh(jax.devices()[:4], 2)
  window, shift, (d, h, w) = (2, 4, 4), (1, 2, 2), (4, 16, 8)  # 2 frame windows, 4 rows, 2 cols.
  labels = attention.compute_mask_labels(d, h, w, window, shift)
  module = attention.WindowAttention(dim=16, window_size=window, num_heads=2)
  x = np.random.default_rng(1).standard_normal((2, d, h, w, 16)).astype(np.float32)
  params = module.init(jax.random.key(0), attention.window_partition(x, window), labels)

  def fn(params, x):
    windows = attention.window_partition(x, window, grid=True)
    out = module.apply(params, windows, labels)
    return attention.window_reverse(out, window, *x.shape[:4])

  loss = lambda params, x: jnp.sum(jnp.sin(fn(params, x)))  # noqa: E731
  spec = NamedSharding(mesh, PartitionSpec(sharding.DATA_AXIS, None, sharding.SPACE_AXIS))
  shardings = (NamedSharding(mesh, PartitionSpec()), spec)
  split = jax.jit(spatial.traced_under(mesh, fn), in_shardings=shardings)
  split_grad = jax.jit(jax.grad(spatial.traced_under(mesh, loss), argnums=(0, 1)),
                       in_shardings=shardings)
  for program in (split, split_grad):
    hlo = program.lower(params, x).compile().as_text()
    assert "all-gather" not in hlo, [line for line in hlo.splitlines() if "all-gather" in line]
  np.testing.assert_allclose(np.asarray(split(params, x)), np.asarray(fn(params, x)), atol=2e-5)
  got, want = split_grad(params, x), jax.grad(loss, argnums=(0, 1))(params, x)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=2e-4)

  # The accelerator deformable convolution's loop over frames, frames split over 'data' (4 x 1):
  # each step takes frames of every device's block, so nothing is gathered.
  import os
  from unittest import mock

  from vrt_jax import deform

  rng = np.random.default_rng(2)
  frames, offset = rng.random((8, 16, 12, 8), np.float32), rng.random((8, 16, 12, 36), np.float32)
  mask, kernel = rng.random((8, 16, 12, 18), np.float32), rng.random((3, 3, 8, 4), np.float32)
  conv = lambda x, o, m: deform.modulated_deform_conv(x, o, m, kernel, None, 2)  # noqa: E731
  frames_spec = NamedSharding(sharding.grid_mesh(jax.devices()[:4], 1),
                              PartitionSpec(sharding.DATA_AXIS))
  with mock.patch.dict(os.environ, {"VRT_JAX_KERNELS": "xla"}), \
       mock.patch.object(deform, "_COLUMN_BYTES", 1):  # One frame per device per step.
    program = jax.jit(spatial.traced_under(frames_spec.mesh, conv),
                      in_shardings=(frames_spec,) * 3)
    hlo = program.lower(frames, offset, mask).compile().as_text()
    assert "while" in hlo and "all-gather" not in hlo
    np.testing.assert_allclose(np.asarray(program(frames, offset, mask)),
                               np.asarray(conv(frames, offset, mask)), rtol=1e-5, atol=1e-5)


def check_parallel_warping_in_steps():
  """A stage under remat 'full' aligns a pair of frames per step (vrt._ALIGN_BYTES), on a
  2 data x 2 space mesh: the one-device values and gradients of the stage without remat. Run by
  the test below in a subprocess (4 devices)."""
  import os
  from unittest import mock

  import jax.numpy as jnp
  from jax.sharding import NamedSharding, PartitionSpec

  from vrt_jax import spatial, vrt

  mesh = sharding.grid_mesh(jax.devices()[:4], 2)
  rng = np.random.default_rng(3)
  b, t, h, w, c = 2, 3, 32, 16, 8
  x = rng.standard_normal((b, t, h, w, c)).astype(np.float32)
  fb, ff = (((rng.random((b, t - 1, h, w, 2)) - 0.5) * 6).astype(np.float32) for _ in range(2))
  stage = dict(dim=c, depth=2, num_heads=2, window_size=(2, 8, 8), deformable_groups=2)
  params = vrt.Stage(**stage).init(jax.random.key(0), x, [fb], [ff])

  def loss(model):
    return lambda p, x: jnp.sum(jnp.sin(model.apply(p, x, [fb], [ff])))

  want = jax.value_and_grad(loss(vrt.Stage(**stage)), argnums=(0, 1))(params, x)
  clips = NamedSharding(mesh, PartitionSpec(sharding.DATA_AXIS, None, sharding.SPACE_AXIS))
  with mock.patch.dict(os.environ, {"VRT_JAX_KERNELS": "xla"}), \
       mock.patch.object(vrt, "_ALIGN_BYTES", 1):  # One pair of frames per device per step.
    split = jax.jit(jax.value_and_grad(spatial.traced_under(
        mesh, loss(vrt.Stage(**stage, remat="full"))), argnums=(0, 1)),
        in_shardings=(NamedSharding(mesh, PartitionSpec()), clips))
    assert "while" in split.lower(params, x).compile().as_text()
    got = split(params, x)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=2e-4)


def _deform_conv(x, offset, mask, *, kernel, bias, dg):
  from vrt_jax import deform

  return deform.modulated_deform_conv(x, offset, mask, kernel, bias, dg)


def _run_on_devices(check_name, devices):
  here = os.path.dirname(os.path.abspath(__file__))
  path = os.pathsep.join([here, os.path.dirname(here), REPO])
  code = f"import test_sharding; test_sharding.{check_name}()"
  proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=train_env(devices,
                        PYTHONPATH=path), capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]


def test_halo_exchange_across_the_split_on_four_devices():
  _run_on_devices("check_halo_exchange", 4)


def test_window_attention_stays_on_its_devices_across_the_split():
  _run_on_devices("check_window_attention", 4)


def test_parallel_warping_in_steps_across_the_split():
  _run_on_devices("check_parallel_warping_in_steps", 4)


def test_space_meshes_on_eight_devices():
  _run_on_devices("check_space_meshes", 8)


def test_mesh_rejects_more_devices_than_exist():
  config = ml_collections.ConfigDict(dict(batch_size=8, num_devices=jax.device_count() + 1))
  with pytest.raises(ValueError, match="only .* devices exist"):
    sharding.make_mesh(config)


# 8 clips of 2 frames: one per device on 8 devices (an 8-device step is 8 one-clip steps).
# One clip per data device of a 4 data x 2 space mesh on 8 devices.
EIGHT = ("--config.batch_size=4", "--config.data.num_frames=2", "--config.total_steps=2",
         "--config.checkpoint_every=2")


@pytest.mark.slow
def test_data_and_space_parallel_training_give_the_same_losses(tmp_path):
  """4 devices as 4 data, and 8 devices as 4 data x 2 space (each clip's rows split over 2
  devices), train as one device does: the same losses."""
  runs = {"one": (1, ()), "four": (4, ()), "split": (8, ("--config.mesh.space=2",))}
  got = {}
  for name, (devices, flags) in runs.items():
    run_train(str(tmp_path / name), *EIGHT, *flags, num_devices=devices)
    got[name] = losses(str(tmp_path / name))
  want = got.pop("one")
  assert want.keys() == {1, 2}
  for name, run in got.items():
    assert run.keys() == want.keys(), name
    np.testing.assert_allclose([run[s] for s in want], [want[s] for s in want], rtol=1e-5,
                               err_msg=name)


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_train_as_one_run(tmp_path):
  """Two processes x 4 fake CPU devices (gloo over loopback) form one 8-device run, on a
  2-D mesh as on a pod: 4 data (across the processes) x 2 space (within each), and its
  checkpoint resumes in one process with another mesh.

  Each process loads its own shard of the data, so the batches (and losses) differ from a
  single-process run's; what must hold is one run: one metrics writer, one checkpoint holding
  both processes' data-iterator states, and a resumable result.
  """
  multi = str(tmp_path / "multi")
  port = _free_port()
  procs = [subprocess.Popen(
      train_cmd(multi, *EIGHT, "--config.mesh.space=2",
                f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
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

  # The same checkpoint resumes in one process on another mesh (1 data x 2 space): the state
  # reshards, and the data order restarts because grain's iterator states are per process.
  proc = run_train(multi, *EIGHT, "--config.total_steps=3", "--config.checkpoint_every=1",
                   "--config.mesh.space=2", num_devices=2)
  assert "saved by a run with 2 processes and this one has 1" in proc.stderr
  got = losses(multi)
  assert sorted(got) == [1, 2, 3] and np.isfinite(got[3])
  saved = [f for f in os.listdir(os.path.join(multi, "checkpoints", "3", "data"))
           if f.endswith(".json")]
  assert saved == ["process_0-of-1.json"]
