"""Data-parallel sharding: one 'data' mesh axis, batch split over it, everything else replicated.

The same code runs on 1 CPU, N (fake) devices, a GPU, or several hosts: only the mesh changes.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


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
  """A 1-D mesh over the 'data' axis with `config.num_devices` devices (0 or absent: all)."""
  n = int(config.get("num_devices", 0)) or jax.device_count()
  if n > jax.device_count():
    raise ValueError(f"config.num_devices={n} but only {jax.device_count()} devices exist")
  if config.batch_size % n:
    raise ValueError(f"batch_size {config.batch_size} is not divisible by the {n} devices of "
                     "the data axis")
  return jax.make_mesh((n,), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,),
                       devices=jax.devices()[:n])


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over the data axis."""
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def local_batch_size(global_batch_size: int) -> int:
  """The part of the global batch this process loads."""
  if global_batch_size % jax.process_count():
    raise ValueError(f"batch_size {global_batch_size} is not divisible by the "
                     f"{jax.process_count()} processes")
  return global_batch_size // jax.process_count()


def make_global_batch(local_batch: dict[str, Any], mesh: Mesh) -> dict[str, jax.Array]:
  """Assembles each process's numpy batch into global arrays sharded over the data axis.

  local_batch: dict of (B_local, ...) numpy arrays; returns (B_global, ...) jax.Arrays.
  """
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in local_batch.items()}
