"""Trains VRT (the `vrt-train` command; vrt_jax/_train_main.py has the flags).

  python train.py --config configs/deblur.py --workdir workdirs/deblur [--config.key=value ...]

Runs again with the same --workdir resume from its latest checkpoint (an unreadable one stops
the run unless --config.resume_fallback=True; docs/reliability.md lists the faults handled).
Several processes (one per host) form one run when given --coordinator_address /
--num_processes / --process_id (or the JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES /
JAX_PROCESS_ID environment variables).
"""

from vrt_jax import _train_main

if __name__ == "__main__":
  _train_main.run()
