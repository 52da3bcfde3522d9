"""Training loop: `train_and_evaluate(config, workdir)` trains VRT as the KAIR recipe does.

Reads top to bottom: mesh, model, data, optimizer, state (shapes from jax.eval_shape, placement
from shardings), restore or initialise, the jitted step, then the loop with logging, NaN checks,
checkpoints and validation. Data parallel only: the batch is split over the 'data' mesh axis,
params and optimizer state are replicated; the same code runs on 1 CPU, N devices or N hosts.

Step numbers count finished updates: the metrics line and checkpoint for step k come after the
k-th update, and update k (1-based) uses learning rate schedule(k - 1).
"""

from __future__ import annotations

import functools
import json
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from tqdm import tqdm

import vrt_jax
from vrt_jax import checkpoint, eval_lib, inference, optim, sharding, tmsa, train_step, video
from vrt_jax.data import pipeline, testsets

METRICS_FILE = "metrics.jsonl"


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Trains (or resumes training in `workdir`) and returns the last logged metrics."""
  workdir = os.path.abspath(workdir)
  is_main = jax.process_index() == 0
  nan_policy = config.nan_policy
  if nan_policy not in ("stop", "skip"):
    raise ValueError(f"config.nan_policy must be 'stop' or 'skip', got {nan_policy!r}")
  if is_main:
    # A full disk or read-only workdir fails here, not at the first checkpoint hours later.
    video.probe_writable(workdir, "workdir")
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2, sort_keys=True))

  # ----------------------------------------------------------------- mesh, model, data
  mesh = sharding.make_mesh(config)
  sharding.check_space_split(mesh, pipeline.batch_shapes(config.data, config.batch_size)["lq"])
  model = vrt_jax.VRT(**config.model.to_dict())
  loader = pipeline.make_train_loader(
      config.data, batch_size=sharding.local_batch_size(config.batch_size), seed=config.seed,
      process_index=jax.process_index(), process_count=jax.process_count())
  data_iter = iter(loader)

  # ----------------------------------------------------------------- optimizer and state
  tx, schedule = optim.make_optimizer(config.optim)
  fix_iter = int(config.optim.fix_iter)

  rng = jax.random.key(config.seed)
  init_rng, dropout_rng = jax.random.split(rng)
  abstract_state = train_step.abstract_state(model, tx, mesh)
  state_sharding = jax.tree.map(lambda a: a.sharding, abstract_state)

  # ----------------------------------------------------------------- restore or initialise
  manager = checkpoint.make_manager(workdir, max_to_keep=config.max_to_keep,
                                    save_interval_steps=config.checkpoint_every)
  start = manager.latest_step()
  saved_scanned = None if start is None else checkpoint.saved_blocks_scanned(manager, start)
  if saved_scanned is not None and saved_scanned != tmsa.is_scanned(abstract_state["params"]):
    # A run started with the other block layout (e.g. before scanning was the default) resumes
    # in its own layout: the same function, only compiled differently.
    logging.warning("Checkpoint %d holds the TMSA blocks %s: resuming with scan_blocks=%s",
                    start, "scanned" if saved_scanned else "per block", saved_scanned)
    model = model.clone(scan_blocks=saved_scanned)
    abstract_state = train_step.abstract_state(model, tx, mesh)
    state_sharding = jax.tree.map(lambda a: a.sharding, abstract_state)
  state = None
  while start is not None:
    logging.info("Resuming from %s/%d", manager.directory, start)
    same_processes = checkpoint.data_layout_matches(manager, start)
    if not same_processes:
      # grain keeps one iterator state per process: with another process count the order cannot
      # continue where it was, so it starts afresh, seeded by the step (no replay of step 1's).
      logging.warning(
          "Checkpoint %d was saved by a run with %s processes and this one has %d: parameters and "
          "optimizer state resume, the data order restarts (shuffle seed %d + %d).", start,
          len(checkpoint.data_saved_by(manager, start)), jax.process_count(), config.seed, start)
      if hasattr(data_iter, "close"):
        data_iter.close()
      loader = pipeline.make_train_loader(
          config.data, batch_size=sharding.local_batch_size(config.batch_size), seed=config.seed,
          process_index=jax.process_index(), process_count=jax.process_count(),
          shuffle_seed=config.seed + start)
      data_iter = iter(loader)
    try:
      state = checkpoint.restore_state(manager, start, abstract_state,
                                       data_iter if same_processes else None)
      break
    except checkpoint.CorruptCheckpointError as e:
      earlier = [s for s in manager.all_steps() if s < start]
      if not config.resume_fallback:
        raise checkpoint.CorruptCheckpointError(
            f"{e}\nNot resuming. Earlier checkpoints: steps {sorted(earlier)}. Rerun with "
            "--config.resume_fallback=True to set this one aside (renamed to <step>.corrupt) "
            "and resume from the latest earlier one that loads.") from e
      logging.warning("Checkpoint %d is unreadable (%s); set aside as %s", start, e,
                      checkpoint.set_aside(manager, start))
      start = max(earlier) if earlier else None
  if start is None:
    start = 0
    init_fn = jax.jit(functools.partial(train_step.init_state, model, tx),
                      out_shardings=state_sharding).lower(init_rng)
    # Initialisation runs once; on CPU, XLA's optimisation passes cost far more than they save.
    options = ({"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
               if jax.default_backend() == "cpu" else None)
    init_fn = init_fn.compile(options)
    sharding.sync_processes("compiled_init")
    state = init_fn(init_rng)
    if config.init_from:
      logging.info("Initialising params from %s", config.init_from)
      source = model
      if config.get("init_from_preset"):  # e.g. 003/004 start from 002 (other pa_frames, DCN).
        source = vrt_jax.VRT(**vrt_jax.presets.get_preset(config.init_from_preset))
      params, fresh = checkpoint.transfer_params(checkpoint.load_params(config.init_from, source),
                                                 jax.device_get(state["params"]))
      if fresh:
        logging.warning("%d parameters differ in shape from %s and keep their initialisation: %s",
                        len(fresh), config.init_from, ", ".join(fresh))
      params = jax.device_put(params, state_sharding["params"])
      opt_state = jax.jit(tx.init, out_shardings=state_sharding["opt_state"])(params)
      state = {"step": state["step"], "params": params, "opt_state": opt_state}
  if int(state["step"]) != start:
    raise ValueError(f"Checkpoint {start} holds step {int(state['step'])}")

  # ----------------------------------------------------------------- the train step
  step_fns = {frozen: train_step.jit_train_step(model, tx, config, mesh, dropout_rng,
                                                frozen=frozen, state_sharding=state_sharding)
              for frozen in (True, False)}
  compiled: dict[bool, Any] = {}  # Compiled ahead of their first run: see sync_processes.

  # ----------------------------------------------------------------- the loop
  total = int(config.total_steps)
  metrics_log = MetricsLog(workdir, resume_step=start, enabled=is_main)
  val_clips = None
  pending: list[tuple[int, dict[str, jax.Array]]] = []  # Fetched lazily: no sync every step.
  last: dict[str, float] = {"step": start}
  last_time, last_step = time.perf_counter(), start
  bad_run = 0  # Consecutive non-finite steps.
  skipped: list[int] = []  # Steps whose update was skipped (nan_policy 'skip').
  pbar = tqdm(total=total, initial=start, desc="train", disable=not is_main, dynamic_ncols=True)
  try:
    for step in range(start + 1, total + 1):
      batch = sharding.make_global_batch(next(data_iter), mesh)
      frozen = step - 1 < fix_iter
      if frozen not in compiled:
        compile_start = time.perf_counter()
        pbar.set_description_str("train (compiling the step)")
        compiled[frozen] = step_fns[frozen].lower(state, batch).compile()
        sharding.sync_processes(f"compiled_step_{step}")
        # Compiling is not training: keep it out of the bar's it/s and ETA and of steps_per_sec.
        pbar.set_description_str("train", refresh=False)
        pbar.unpause()
        last_time += time.perf_counter() - compile_start
      state, step_metrics = compiled[frozen](state, batch)
      pending.append((step, step_metrics))
      pbar.update(1)

      log_now = step % config.log_every == 0 or step == total
      save_now = step % config.checkpoint_every == 0 or step == total
      # eval_every > 0: every eval_every steps and at the end; 0: at the end only; < 0: never.
      eval_now = config.eval_every >= 0 and (
          step == total or (config.eval_every > 0 and step % config.eval_every == 0))
      if not (log_now or save_now or eval_now):
        continue
      # Every loss up to `step` is checked before anything at `step` is logged or saved.
      fetched = jax.device_get(pending)
      pending = []
      for s, m in fetched:
        if np.isfinite(m["loss"]) and np.isfinite(m["grad_norm"]):
          bad_run = 0
          continue
        what = (f"loss {float(m['loss'])}, gradient norm {float(m['grad_norm'])} at step {s}")
        bad_run += 1
        if nan_policy == "skip" and bad_run <= config.max_nan_skips:
          logging.warning("Non-finite %s: update skipped (nan_policy 'skip')", what)
          skipped.append(s)
          continue
        manager.wait_until_finished()
        good = manager.latest_step()
        reason = (f"{bad_run} non-finite steps in a row" if nan_policy == "skip"
                  else "nan_policy 'stop'")
        raise FloatingPointError(
            f"Non-finite {what}; stopping ({reason}). Nothing after step "
            f"{s - 1} was saved. Last good checkpoint: "
            + (f"step {good} in {manager.directory}" if good is not None else "none"))
      record: dict[str, float] = {}
      if log_now:
        now = time.perf_counter()
        record = {"step": step, "loss": float(fetched[-1][1]["loss"]),
                  "loss_avg": float(np.mean([m["loss"] for _, m in fetched])),
                  "grad_norm": float(fetched[-1][1]["grad_norm"]),
                  "lr": float(schedule(step - 1)),
                  "lr_fixed": 0.0 if step - 1 < fix_iter
                  else float(schedule(step - 1)) * config.optim.fix_lr_mul,
                  "steps_per_sec": (step - last_step) / (now - last_time)}
        pbar.set_postfix(loss=f"{record['loss']:.4f}")
      if skipped and log_now:
        record["skipped_steps"] = len(skipped)
      if save_now:
        try:
          checkpoint.save_state(manager, step, state, data_iter, force=step == total)
        except OSError as e:
          good = manager.latest_step()
          raise OSError(e.errno, f"Saving checkpoint {step} in {manager.directory} failed "
                                 f"({e.strerror or e}); the last complete checkpoint is "
                                 f"{good}") from e
      if eval_now:
        if val_clips is None:
          val_clips = pipeline.make_val_clips(config.data, num_clips=config.data.val_clips,
                                              seed=config.seed + 1)
          # This process's devices: whole clips over the data axis, rows split as in training.
          # One compilation for every validation.
          val_mesh = sharding.local_mesh(mesh, max_data=len(val_clips))
          val_apply = inference.make_apply_fn(model, val_mesh)
        sample = os.path.join(workdir, "samples", f"step_{step:07d}.png") if is_main else None
        val = validate(model, jax.device_get(state["params"]), val_clips, config,
                       apply_fn=val_apply, sample_path=sample,
                       clips_per_call=sharding.data_size(val_mesh))
        logging.info("step %d: %s", step, val)
        sharding.sync_processes(f"validated_{step}")
        record.update({"step": step, **val})
      if record:
        metrics_log.write(record)
        last = record
      if log_now:
        # Validation time is not training speed.
        last_time, last_step = time.perf_counter(), step
  finally:
    pbar.close()
    manager.wait_until_finished()
    manager.close()
    metrics_log.close()
    if hasattr(data_iter, "close"):
      data_iter.close()
  return last


# --------------------------------------------------------------------- validation


def validate(model: Any, params: Any, clips: list[dict[str, Any]],
             config: ml_collections.ConfigDict, *, apply_fn: inference.ApplyFn | None = None,
             sample_path: str | None = None, clips_per_call: int = 1) -> dict[str, float]:
  """Scores the held-out clips as eval.py scores a test set (`eval_lib.evaluate`).

  clips: dicts with lq (T, h, w, Cin), gt (T_out, H, W, 3) and name (`pipeline.make_val_clips`).
  Returns val_psnr and val_ssim (RGB, per frame, averaged per clip then over clips) and, where an
  input frame stands for each output (not frame interpolation), val_psnr_input: the input's PSNR,
  bicubic-upscaled for super-resolution. With `sample_path`, writes the first clip's middle
  frame there: input | output | ground truth, small crops enlarged. Pass the same `apply_fn` to
  every validation of a run so the forward pass compiles once; clips_per_call: the data axis of
  its mesh (`eval_lib.evaluate`).
  """
  testset = [testsets.TestClip(c.get("name", f"clip{i}"), c["lq"], c["gt"],
                               list(range(len(c["gt"]))), [f"{t:08d}" for t in range(len(c["gt"]))])
             for i, c in enumerate(clips)]
  results = eval_lib.evaluate(model, {"params": params}, testset, tile=tuple(config.eval.tile),
                              tile_overlap=tuple(config.eval.tile_overlap), apply_fn=apply_fn,
                              comparison_path=sample_path, comparison_min_height=256,
                              clips_per_call=clips_per_call,
                              log=logging.info)
  average = results["average"]
  out = {"val_psnr": average["psnr"], "val_ssim": average["ssim"]}
  if "input_psnr" in average:
    out["val_psnr_input"] = average["input_psnr"]
  return out


# --------------------------------------------------------------------- logging


class MetricsLog:
  """<workdir>/metrics.jsonl (one JSON object per line) and TensorBoard scalars; process 0 only.

  On resume, lines for steps after the restored checkpoint (written by the interrupted run, and
  possibly cut off mid-line) are dropped so the file reads like an uninterrupted run's.
  """

  def __init__(self, workdir: str, *, resume_step: int, enabled: bool = True):
    self.enabled = enabled
    if not enabled:
      return
    self.path = os.path.join(workdir, METRICS_FILE)
    if os.path.exists(self.path):
      kept = []
      with open(self.path) as f:
        for line in f:
          try:
            record = json.loads(line)
          except json.JSONDecodeError:
            continue  # A line cut off by a kill.
          if record.get("step", 0) <= resume_step:
            kept.append(json.dumps(record))
      tmp = self.path + ".tmp"
      with open(tmp, "w") as f:
        f.write("".join(line + "\n" for line in kept))
      os.replace(tmp, self.path)
    self.file = open(self.path, "a")  # noqa: SIM115
    self.tb = None
    try:
      import tensorboardX
      self.tb = tensorboardX.SummaryWriter(os.path.join(workdir, "tensorboard"),
                                           purge_step=resume_step + 1 if resume_step else None)
    except ImportError:
      logging.warning("tensorboardX is not installed: no TensorBoard logs")

  def write(self, record: dict[str, float]) -> None:
    if not self.enabled:
      return
    self.file.write(json.dumps(record) + "\n")
    self.file.flush()
    if self.tb is not None:
      for k, v in record.items():
        if k != "step":
          self.tb.add_scalar(k, v, record["step"])
      self.tb.flush()

  def close(self) -> None:
    if self.enabled:
      self.file.close()
      if self.tb is not None:
        self.tb.close()


def read_metrics(workdir: str) -> list[dict[str, float]]:
  """The records of <workdir>/metrics.jsonl."""
  with open(os.path.join(workdir, METRICS_FILE)) as f:
    return [json.loads(line) for line in f if line.strip()]
