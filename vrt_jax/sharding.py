"""Sharding: a ('data', 'space') mesh; clips split over 'data', their height over 'space'.

Data parallelism puts whole clips on the 'data' axis. Spatial parallelism (`config.mesh.space`
devices per clip) splits the height of each clip, and of every activation derived from it, over
the 'space' axis: VRT's memory is activations, so this is what lets one clip outgrow one chip.
Parameters and optimizer state are replicated. The same code runs on 1 CPU, N (fake) devices, a
GPU, or several hosts: only the mesh changes.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from vrt_jax import spatial

DATA_AXIS = spatial.DATA_AXIS
SPACE_AXIS = spatial.SPACE_AXIS
# A clip (B, T, H, W, C): batch over 'data', height over 'space'.
CLIP_SPEC = PartitionSpec(DATA_AXIS, None, SPACE_AXIS)


def maybe_initialize_distributed(coordinator_address: str = "", num_processes: int = 0,
                                 process_id: int = -1) -> None:
  """Calls jax.distributed.initialize() when launched as several processes.

  Explicit arguments (e.g. from flags) win; otherwise JAX_COORDINATOR_ADDRESS /
  JAX_NUM_PROCESSES / JAX_PROCESS_ID from the environment; otherwise nothing is done for a single
  process. Cluster launchers that JAX detects on its own (SLURM, Cloud TPU, ...) are covered by
  setting JAX_DISTRIBUTED=1, which calls initialize() without arguments.
  """
  coordinator_address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS", "")
  num_processes = num_processes or int(os.environ.get("JAX_NUM_PROCESSES", "0"))
  if process_id < 0:
    process_id = int(os.environ.get("JAX_PROCESS_ID", "-1"))
  if coordinator_address and num_processes > 1:
    if process_id < 0:
      raise ValueError("A multi-process launch needs a process id (flag or JAX_PROCESS_ID)")
    # CPU collectives across processes need gloo; the setting does not affect GPU/TPU backends.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)
  elif os.environ.get("JAX_DISTRIBUTED", "") == "1":
    jax.distributed.initialize()


def sync_processes(name: str, timeout_s: int = 1800) -> None:
  """Waits until every process reaches `name` (a no-op for one process).

  Called after process-local work whose duration differs between hosts (compiling, validation):
  a collective entered by one process waits only briefly for the others (gloo on CPU gives up
  after 30 s), whereas this barrier waits `timeout_s`. Names must be unique within a run.
  """
  if jax.process_count() > 1:
    ocp.multihost.sync_global_processes(f"vrt_jax_{name}", timeout=timeout_s)


def make_mesh(config: ml_collections.ConfigDict) -> Mesh:
  """A (data, space) mesh over `config.num_devices` devices (0 or absent: all).

  `config.mesh.space` (default 1) devices split each clip's height; the rest form the data axis.
  A clip's devices are consecutive, so within one process (one host) on a pod.
  """
  n = int(config.get("num_devices", 0)) or jax.device_count()
  space = int(config.get("mesh", {}).get("space", 1))
  if n > jax.device_count():
    raise ValueError(f"config.num_devices={n} but only {jax.device_count()} devices exist")
  if space < 1 or n % space:
    raise ValueError(f"config.mesh.space={space} must be a divisor of the {n} devices in use "
                     "(config.num_devices)")
  if space > jax.local_device_count() or jax.local_device_count() % space:
    raise ValueError(f"config.mesh.space={space} must divide the {jax.local_device_count()} "
                     "devices of one process: a clip is split within a host, never across hosts")
  data = n // space
  if config.batch_size % data:
    raise ValueError(f"batch_size {config.batch_size} is not divisible by the {data} devices of "
                     f"the data axis ({n} devices / mesh.space {space})")
  return grid_mesh(jax.devices()[:n], space)


def grid_mesh(devices: Any, space: int) -> Mesh:
  """The (data, space) mesh of `devices`, `space` consecutive ones per clip."""
  grid = np.asarray(devices).reshape(-1, space)
  return Mesh(grid, (DATA_AXIS, SPACE_AXIS), axis_types=(jax.sharding.AxisType.Auto,) * 2)


def space_mesh(space: int, *, spread: bool = False) -> Mesh:
  """A mesh of this process's devices for restoring clips, each clip's rows split over `space`
  devices: (1, space), or with `spread` (evaluating a test set) (data, space) over as many of
  the devices as divide into groups of `space`, one clip per group at a time."""
  devices = jax.local_devices()
  if space < 1:
    raise ValueError(f"--space must be at least 1, got {space}")
  if space > len(devices):
    hint = (f"; on CPU, XLA_FLAGS=--xla_force_host_platform_device_count={space} makes that "
            "many" if jax.default_backend() == "cpu" else "")
    raise ValueError(f"--space {space} needs {space} devices, but this machine has "
                     f"{len(devices)} ({jax.default_backend()}){hint}")
  return grid_mesh(devices[:len(devices) // space * space if spread else space], space)


def local_mesh(mesh: Mesh, max_data: int | None = None) -> Mesh:
  """This process's devices of a (data, space) mesh, with its space axis and at most `max_data`
  on its data axis: a mesh for work each process does on its own (validation in training)."""
  space = space_size(mesh)
  mine = [d for d in mesh.devices.flat if d.process_index == jax.process_index()]
  return grid_mesh(mine[:space * max(1, max_data)] if max_data else mine, space)


def data_size(mesh: Mesh | None) -> int:
  """How many clips a mesh processes side by side (its data axis; 1 without a mesh)."""
  return 1 if mesh is None else int(dict(mesh.shape).get(DATA_AXIS, 1))


def space_size(mesh: Mesh) -> int:
  """How many devices split one clip's height (1 on a data-only mesh)."""
  return int(dict(mesh.shape).get(SPACE_AXIS, 1))


def check_space_split(mesh: Mesh, lq_shape: tuple[int, ...]) -> None:
  """Raises unless the LQ clip (B, T, H, W, C) splits into equal bands of rows on `mesh`.

  Each band must be a whole number of the model's coarsest rows (H / 8 at VRT's 1/8 scale), so
  every scale splits evenly.
  """
  space, h = space_size(mesh), int(lq_shape[2])
  if space > 1 and h % (8 * space):
    raise ValueError(f"mesh.space={space} cannot split the LQ height {h} evenly at every scale "
                     f"of VRT (down to 1/8): use an LQ height that is a multiple of {8 * space} "
                     "(e.g. data.gt_patch) or a smaller mesh.space")


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Clips (B, T, H, W, C): batch over the data axis, height over the space axis."""
  spec = CLIP_SPEC if SPACE_AXIS in mesh.axis_names else PartitionSpec(DATA_AXIS)
  return NamedSharding(mesh, spec)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def local_batch_size(global_batch_size: int) -> int:
  """The part of the global batch this process loads."""
  if global_batch_size % jax.process_count():
    raise ValueError(f"batch_size {global_batch_size} is not divisible by the "
                     f"{jax.process_count()} processes")
  return global_batch_size // jax.process_count()


def make_global_batch(local_batch: dict[str, Any], mesh: Mesh) -> dict[str, jax.Array]:
  """Assembles each process's numpy batch into global arrays sharded as `batch_sharding`.

  local_batch: dict of (B_local, T, H, W, C) numpy arrays, whole clips (a clip's space devices
  are all in one process); returns (B_global, T, H, W, C) jax.Arrays.
  """
  sharding = batch_sharding(mesh)
  out = {}
  for k, v in local_batch.items():
    v = np.asarray(v)
    global_shape = (v.shape[0] * jax.process_count(), *v.shape[1:])
    out[k] = jax.make_array_from_process_local_data(sharding, v, global_shape)
  return out
