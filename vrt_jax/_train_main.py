"""`vrt-train` and `python train.py`: trains VRT.

  vrt-train --config configs/deblur.py --workdir workdirs/deblur [--config.key=value ...]

Runs again with the same --workdir resume from its latest checkpoint (an unreadable one stops
the run unless --config.resume_fallback=True; docs/reliability.md lists the faults handled).
Several processes (one per host) form one run when given --coordinator_address /
--num_processes / --process_id (or the JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES /
JAX_PROCESS_ID environment variables). A user error (a missing config, a bad value, an
unwritable workdir) is two lines on stderr and exit status 2; --debug shows the traceback.
"""

from absl import app, flags, logging
from ml_collections import config_flags

from vrt_jax import absl_cli, runtime, sharding

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and samples.")
flags.DEFINE_string("coordinator_address", "", "host:port of process 0 for multi-process runs.")
flags.DEFINE_integer("num_processes", 0, "Number of processes of a multi-process run.")
flags.DEFINE_integer("process_id", -1, "Index of this process in a multi-process run.")
absl_cli.define_debug_flag()
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  runtime.enable_compilation_cache()  # A restarted run loads its compiled step.
  sharding.maybe_initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes,
                                        FLAGS.process_id)
  from vrt_jax import train_lib  # After distributed init: it touches no backend before that.

  result = train_lib.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  logging.info("Finished: %s", result)
  if result.get("already_finished"):
    print(f"{FLAGS.workdir} already holds this run's last step ({result['step']} of "
          f"{FLAGS.config.total_steps}): nothing to train. Delete it or pass another --workdir "
          "to train again.", flush=True)
  summary = train_lib.read_summary(FLAGS.workdir)
  if summary and summary["step"] == result["step"]:
    print(train_lib.summary_text(summary), flush=True)
  elif "val_psnr" in result:
    line = f"Validation PSNR at step {result['step']}: output {result['val_psnr']:.2f} dB"
    if "val_psnr_input" in result:
      line += f", input {result['val_psnr_input']:.2f} dB"
    print(line, flush=True)


def run() -> None:
  """Entry point of `vrt-train` and `python train.py`."""
  absl_cli.precheck("vrt-train")
  runtime.reexec_with_huge_pages()  # Steps 10-15% faster on CPU (vrt_jax.runtime).
  absl_cli.run(main, prog="vrt-train")
