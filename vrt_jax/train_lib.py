"""Training loop: `train_and_evaluate(config, workdir)` trains VRT as the KAIR recipe does.

Reads top to bottom: mesh, model, data, optimizer, state (shapes from jax.eval_shape, placement
from shardings), restore or initialise, the jitted step, then the loop with logging, NaN checks,
checkpoints and validation. Data parallel only: the batch is split over the 'data' mesh axis,
params and optimizer state are replicated; the same code runs on 1 CPU, N devices or N hosts.

Step numbers count finished updates: the metrics line and checkpoint for step k come after the
k-th update, and update k (1-based) uses learning rate schedule(k - 1).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import threading
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from tqdm import tqdm

import vrt_jax
from vrt_jax import baselines as classical
from vrt_jax import (
  checkpoint,
  eval_lib,
  figures,
  inference,
  kernels,
  metrics,
  optim,
  presets,
  sharding,
  tmsa,
  train_step,
  video,
)
from vrt_jax.data import pipeline, testsets

METRICS_FILE = "metrics.jsonl"
BASELINES_FILE = "baselines.json"
SUMMARY_FILE = "summary.json"
CURVES_FILE = "curves.png"


def _read_json(path: str) -> Any:
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def config_changes(previous: Any, config: ml_collections.ConfigDict) -> list[str]:
  """'key: old -> new' for every setting of `config` that differs from `previous` (a config
  saved as JSON, or None: no changes known), keys dotted, in order."""
  if not isinstance(previous, dict):
    return []
  now = json.loads(config.to_json_best_effort(sort_keys=True))

  def flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
      return {prefix[:-1]: d}
    return {k: v for key, value in d.items() for k, v in flat(value, f"{prefix}{key}.").items()}

  old, new = flat(previous), flat(now)
  return [f"{k}: {old.get(k, '(unset)')} -> {new.get(k, '(unset)')}"
          for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Trains (or resumes training in `workdir`) and returns the last logged metrics."""
  workdir = os.path.abspath(workdir)
  is_main = jax.process_index() == 0
  nan_policy = config.nan_policy
  if nan_policy not in ("stop", "skip"):
    raise ValueError(f"config.nan_policy must be 'stop' or 'skip', got {nan_policy!r}")
  compute_dtype = config.model.get("dtype", "float32")
  if compute_dtype not in presets.COMPUTE_DTYPES:
    raise ValueError(
        f"config.model.dtype must be one of {', '.join(presets.COMPUTE_DTYPES)} (the compute "
        f"dtype; parameters and optimizer state stay float32), got {compute_dtype!r}")
  if config.model.get("matmul_precision", "default") not in kernels.MATMUL_PRECISIONS:
    raise ValueError(f"config.model.matmul_precision must be one of "
                     f"{', '.join(kernels.MATMUL_PRECISIONS)}, got "
                     f"{config.model.matmul_precision!r}")
  previous_config = _read_json(os.path.join(workdir, "config.json"))
  if is_main:
    # A full disk or read-only workdir fails here, not at the first checkpoint hours later.
    video.probe_writable(workdir, "workdir")
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2, sort_keys=True))

  # ----------------------------------------------------------------- mesh, model, data
  mesh = sharding.make_mesh(config)
  sharding.check_space_split(mesh, pipeline.batch_shapes(config.data, config.batch_size)["lq"])
  model_kwargs = config.model.to_dict()
  platform = mesh.devices.flat[0].platform
  model_kwargs["remat"] = kernels.resolve_remat(model_kwargs.get("remat", "none"), platform)
  if model_kwargs["remat"] != config.model.get("remat", "none"):
    logging.info("remat policy %s on %s: %s", config.model.remat, platform, model_kwargs["remat"])
  if compute_dtype != "float32":
    logging.info("computing in %s (float32 parameters and optimizer state)", compute_dtype)
  if config.model.get("matmul_precision", "default") != "default":
    logging.info("float32 matmuls and convolutions at %s precision",
                 config.model.matmul_precision)
  model = vrt_jax.VRT(**model_kwargs)

  def data_from(shuffle_seed: int) -> Any:
    return iter(pipeline.make_train_loader(
        config.data, batch_size=sharding.local_batch_size(config.batch_size), seed=config.seed,
        process_index=jax.process_index(), process_count=jax.process_count(),
        shuffle_seed=shuffle_seed))

  data_iter = data_from(config.seed)

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
  changed = config_changes(previous_config, config) if start is not None else []
  if changed:
    logging.warning("%s was trained with another config; resuming its checkpoint with this one "
                    "(changed: %s). Use a new --workdir to start afresh.", workdir,
                    "; ".join(changed[:8]) + (f"; and {len(changed) - 8} more"
                                              if len(changed) > 8 else ""))
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
      data_iter = data_from(config.seed + start)
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
    with kernels.compiling_for(platform):
      init_fn = jax.jit(functools.partial(train_step.init_state, model, tx),
                        out_shardings=state_sharding).lower(init_rng)
    # Initialisation runs once; on CPU, XLA's optimisation passes cost far more than they save.
    options = ({"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
               if jax.default_backend() == "cpu" else None)
    init_fn = init_fn.compile(options)
    sharding.sync_processes("compiled_init")
    state = init_fn(init_rng)
    if config.get("zero_init_last", False):
      # The output conv starts at zero, so the network starts as the identity (its residual
      # connection) instead of adding random noise that the first steps must unlearn.
      state["params"] = {**state["params"], "conv_last": jax.tree.map(
          lambda a, s: jax.device_put(np.zeros(a.shape, a.dtype), s),
          state["params"]["conv_last"], state_sharding["params"]["conv_last"])}
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
  if start >= int(config.total_steps):
    # A finished run started again: report it rather than silently doing nothing.
    logging.info("%s already holds step %d of %d: nothing to train", workdir, start,
                 config.total_steps)
    manager.close()
    if hasattr(data_iter, "close"):
      data_iter.close()
    done = os.path.exists(os.path.join(workdir, METRICS_FILE)) and read_metrics(workdir)
    validated = [r for r in done or [] if "val_psnr" in r]
    return {**(validated[-1] if validated else {}), "step": start, "already_finished": True}

  # ----------------------------------------------------------------- the train step
  step_fns = {frozen: train_step.jit_train_step(model, tx, config, mesh, dropout_rng,
                                                frozen=frozen, state_sharding=state_sharding)
              for frozen in (True, False)}
  compiled: dict[bool, Any] = {}  # Compiled ahead of their first run: see sync_processes.

  # ----------------------------------------------------------------- the loop
  total = int(config.total_steps)
  metrics_log = MetricsLog(workdir, resume_step=start, enabled=is_main)
  val_clips, val_apply, baseline = None, None, None
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
        with phase(pbar, "compiling the training step"):
          with kernels.compiling_for(platform):  # The mesh's, whatever the default backend.
            compiled[frozen] = step_fns[frozen].lower(state, batch).compile()
        sharding.sync_processes(f"compiled_step_{step}")
        # Compiling is not training: keep it out of the bar's it/s and ETA and of steps_per_sec.
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
          if is_main:
            with phase(pbar, "classical baselines (tuned on training clips)"):
              baseline = classical_baselines(config, val_clips, workdir)
        sample = os.path.join(workdir, "samples", f"step_{step:07d}.png") if is_main else None
        with phase(pbar, "validation"):
          val = validate(model, jax.device_get(state["params"]), val_clips, config,
                         apply_fn=val_apply, sample_path=sample, baseline=baseline,
                         title=f"{val_clips[0]['name']}, middle frame, step {step}",
                         clips_per_call=sharding.data_size(val_mesh))
        logging.info("step %d: %s", step, val)
        sharding.sync_processes(f"validated_{step}")
        record.update({"step": step, **val})
      if record:
        metrics_log.write(record)
        last = record
      if eval_now and is_main:
        write_report(workdir, config, baseline, sample)
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
             sample_path: str | None = None, baseline: dict[str, Any] | None = None,
             title: str = "", clips_per_call: int = 1) -> dict[str, Any]:
  """Scores the held-out clips as eval.py scores a test set (`eval_lib.evaluate`).

  clips: dicts with lq (T, h, w, Cin), gt (T_out, H, W, 3) and name (`pipeline.make_val_clips`).
  Returns val_psnr and val_ssim (RGB, per frame, averaged per clip then over clips) and, where an
  input frame stands for each output (not frame interpolation), val_psnr_input / val_ssim_input:
  the input's, bicubic-upscaled for super-resolution. `baseline`: a `classical_baselines` result,
  reported as val_psnr_baseline / val_ssim_baseline / val_baseline (the best method's name). With
  `sample_path`, writes a labelled PNG of the first clip's middle frame with a zoomed crop: input
  | best classical method (with `baseline`) | VRT | ground truth. Pass the same `apply_fn` to
  every validation of a run so the forward pass compiles once; clips_per_call: the data axis
  of its mesh (`eval_lib.evaluate`).
  """
  testset = [_test_clip(c, i) for i, c in enumerate(clips)]

  def comparison(clip: testsets.TestClip, scored: np.ndarray) -> None:
    write_side_by_side(sample_path, clips[0], scored, baseline=baseline, title=title)

  results = eval_lib.evaluate(model, {"params": params}, testset, tile=tuple(config.eval.tile),
                              tile_overlap=tuple(config.eval.tile_overlap), apply_fn=apply_fn,
                              comparison_fn=comparison if sample_path else None,
                              clips_per_call=clips_per_call,
                              log=logging.info)
  average = results["average"]
  out: dict[str, Any] = {"val_psnr": average["psnr"], "val_ssim": average["ssim"]}
  if "input_psnr" in average:
    scale = inference.ModelSpec.from_model(model).scale
    out["val_psnr_input"] = average["input_psnr"]
    out["val_ssim_input"] = float(np.mean([
        classical.clip_ssim(eval_lib.input_baseline(c, scale), c.gt) for c in testset]))
  if baseline is not None:
    best = baseline["best"]
    out.update(val_psnr_baseline=baseline["scores"][best]["psnr"],
               val_ssim_baseline=baseline["scores"][best]["ssim"], val_baseline=best)
  return out


def _test_clip(clip: dict[str, Any], i: int) -> testsets.TestClip:
  frames = list(range(len(clip["gt"])))
  return testsets.TestClip(clip.get("name", f"clip{i}"), clip["lq"], clip["gt"], frames,
                           [f"{t:08d}" for t in frames])


def _baseline_task(config: ml_collections.ConfigDict) -> tuple[float | None, int | None]:
  """(sigma, scale) of the task's classical methods: the validation noise std for denoising,
  the data's scale for super-resolution."""
  if config.data.degradation == "noise":
    return float(config.data.val_sigma) / 255.0, None
  return None, pipeline.settings_from_config(config.data).scale


def classical_baselines(config: ml_collections.ConfigDict, clips: list[dict[str, Any]],
                        workdir: str | None = None) -> dict[str, Any] | None:
  """The classical methods of the task, tuned on training clips, scored on `clips`.

  Runs when config.eval.baselines is set and the task has classical counterparts
  (`vrt_jax.baselines.methods_for(config.data.degradation)`: denoising and super-resolution).
  Each method's setting is chosen on config.eval.baseline_tune_clips clips made like the
  validation clips but from the training data, never on `clips`. Returns {'degradation',
  'settings', 'scores' {name: {'psnr', 'ssim'}}, 'labels', 'best', 'input' {'psnr', 'ssim'},
  'clips', 'tuned_on', 'sigma', 'scale'}, cached in <workdir>/baselines.json for reruns; None
  when off or when the task has none.
  """
  if not config.eval.get("baselines", False):
    return None
  degradation = config.data.degradation
  methods = classical.methods_for(degradation)
  if not methods:
    logging.warning(
        "No classical baselines for degradation %r (denoising 'noise' and super-resolution "
        "'bi' / 'bd' have them; deblurring has no single known blur kernel to invert); "
        "skipping them.", degradation)
    return None
  path = os.path.join(workdir, BASELINES_FILE) if workdir else None
  names = [c["name"] for c in clips]
  sigma, scale = _baseline_task(config)
  # Settings as JSON writes them: a cached result is reused only for the same grids.
  grids = json.loads(json.dumps({n: m.grid for n, m in methods.items()}))
  if path and os.path.exists(path):
    with open(path) as f:
      cached = json.load(f)
    if (cached.get("clips") == names and cached.get("sigma") == sigma
        and cached.get("scale") == scale and cached.get("degradation") == degradation
        and cached.get("grids") == grids):
      return cached
  tune_clips = pipeline.make_val_clips(config.data, num_clips=config.eval.baseline_tune_clips,
                                       seed=config.seed + 2, split="train")
  as_samples = lambda cs: [(c["lq"][..., :3], c["gt"], sigma) for c in cs]
  settings = classical.tune(as_samples(tune_clips), list(methods), scale=scale)
  scores = classical.score(as_samples(clips), settings, scale=scale)
  inputs = [(eval_lib.input_baseline(_test_clip(c, i), scale or 1), c["gt"])
            for i, c in enumerate(clips)]
  result = {
      "degradation": degradation, "sigma": sigma, "scale": scale, "clips": names,
      "tuned_on": [c["name"] for c in tune_clips], "grids": grids, "settings": settings,
      "scores": scores, "best": classical.best(scores),
      "labels": {n: methods[n].label for n in settings},
      "input": {"psnr": float(np.mean([classical.clip_psnr(x, g) for x, g in inputs])),
                "ssim": float(np.mean([classical.clip_ssim(x, g) for x, g in inputs]))}}
  if path:
    with open(path, "w") as f:
      json.dump(result, f, indent=1)
  return result


def write_side_by_side(path: str, clip: dict[str, Any], out: np.ndarray, *,
                       baseline: dict[str, Any] | None = None, title: str = "") -> None:
  """PNG of the middle frame: input | best classical method (if any) | VRT | ground truth.

  A super-resolution input is shown nearest-upscaled to the GT size (and labelled so); each
  label carries the frame's PSNR, and a zoomed crop of the most detailed region sits under each
  frame.
  """
  gt = clip["gt"]
  t = gt.shape[0] // 2
  lq = clip["lq"][..., :3]
  lq_t = lq[min(t, lq.shape[0] - 1)]
  s = gt.shape[1] // lq_t.shape[0]
  lq_t = np.clip(np.repeat(np.repeat(lq_t, s, axis=0), s, axis=1), 0, 1)
  to8 = metrics.to_uint8
  with_db = lambda name, frame: f"{name}\n{metrics.psnr(to8(frame), to8(gt[t])):.2f} dB"
  if clip["lq"].shape[-1] > 3:
    label = f"input (noise sigma {255 * float(clip['lq'][0, 0, 0, 3]):.0f})"
  elif s > 1:
    label = f"input ({lq.shape[2]}x{lq.shape[1]}, nearest x{s})"
  else:
    label = "input"
  panels = [(with_db(label, lq_t), lq_t)]
  if baseline is not None:
    best = baseline["best"]
    restored = classical.restore(best, lq, baseline["settings"][best], sigma=baseline["sigma"],
                                 scale=baseline.get("scale"))
    panels.append((with_db(f"best classical:\n{baseline['labels'][best]}", restored[t]),
                   restored[t]))
  panels += [(with_db("VRT", out[t]), out[t]), ("ground truth", gt[t])]
  figures.side_by_side(path, panels, title=title)


def write_report(workdir: str, config: ml_collections.ConfigDict,
                 baseline: dict[str, Any] | None, sample_path: str | None) -> dict[str, Any]:
  """curves.png and summary.json from metrics.jsonl; returns the summary.

  The summary has the last validation's table (input, each classical method, VRT; PSNR and
  SSIM) and the paths of the figures; `summary_text` formats it.
  """
  records = read_metrics(workdir)
  val = [r for r in records if "val_psnr" in r]
  if not val:
    return {}
  last = val[-1]
  best = baseline["best"] if baseline else None
  curves = figures.training_curves(
      os.path.join(workdir, CURVES_FILE), records,
      baseline_psnr=baseline["scores"][best]["psnr"] if baseline else None,
      baseline_label=baseline["labels"][best] if baseline else "",
      title=f"VRT, {config.data.degradation} task: {os.path.basename(workdir)}")
  rows = []
  if "val_psnr_input" in last:
    rows.append({"method": "input", "psnr": last["val_psnr_input"],
                 "ssim": last["val_ssim_input"]})
  if baseline:
    for name, sc in baseline["scores"].items():
      rows.append({"method": baseline["labels"][name], "psnr": sc["psnr"], "ssim": sc["ssim"],
                   "best_classical": name == best})
  rows.append({"method": f"VRT (step {last['step']})", "psnr": last["val_psnr"],
               "ssim": last["val_ssim"]})
  summary = {"step": last["step"], "total_steps": int(config.total_steps), "rows": rows,
             "clips": len(baseline["clips"]) if baseline else int(config.data.val_clips),
             "sample": sample_path, "curves": curves, "val_psnr": last["val_psnr"],
             "val_psnr_input": last.get("val_psnr_input"),
             "val_psnr_baseline": last.get("val_psnr_baseline"),
             "val_baseline": baseline["labels"][best] if baseline else None}
  tmp = os.path.join(workdir, SUMMARY_FILE + ".tmp")
  with open(tmp, "w") as f:
    json.dump(summary, f, indent=1)
  os.replace(tmp, os.path.join(workdir, SUMMARY_FILE))
  return summary


def summary_text(summary: dict[str, Any]) -> str:
  """The summary as a small table, the margin over the best classical method and the figures."""
  lines = [f"Held-out validation clips ({summary['clips']}), step {summary['step']} of "
           f"{summary['total_steps']}:",
           f"  {'method':40s} {'PSNR (dB)':>9s} {'SSIM':>7s}"]
  for row in summary["rows"]:
    mark = "  <- best classical" if row.get("best_classical") else ""
    lines.append(f"  {row['method']:40s} {row['psnr']:9.2f} {row['ssim']:7.4f}{mark}")
  line = f"Validation PSNR at step {summary['step']}: output {summary['val_psnr']:.2f} dB"
  if summary.get("val_psnr_input") is not None:
    line += f", input {summary['val_psnr_input']:.2f} dB"
  if summary.get("val_psnr_baseline") is not None:
    margin = summary["val_psnr"] - summary["val_psnr_baseline"]
    line += (f", best classical ({summary['val_baseline']}) {summary['val_psnr_baseline']:.2f}"
             f" dB: VRT {margin:+.2f} dB")
  lines.append(line)
  if summary.get("sample"):
    lines.append(f"Side by side: {summary['sample']}")
  lines.append(f"Curves: {summary['curves']}")
  return "\n".join(lines)


def read_summary(workdir: str) -> dict[str, Any] | None:
  """<workdir>/summary.json, written at each validation; None if there is none yet."""
  path = os.path.join(workdir, SUMMARY_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


@contextlib.contextmanager
def phase(pbar: tqdm, what: str):
  """Shows `what` and its running time on the progress bar while a blocking call runs.

  A compile or a validation takes tens of seconds without advancing the bar; the label says what
  the run is doing instead of looking frozen, and a line with the time is printed at the end.
  A disabled bar (the processes other than 0) shows nothing.
  """
  if pbar.disable:  # A disabled tqdm has no description to set.
    yield
    return
  start, label = time.perf_counter(), pbar.desc
  done = threading.Event()

  def tick():
    while not done.wait(1.0):
      pbar.set_description_str(f"{what} ({time.perf_counter() - start:.0f} s)")

  pbar.set_description_str(what)
  thread = threading.Thread(target=tick, daemon=True)
  thread.start()
  try:
    yield
  finally:
    done.set()
    thread.join()
    pbar.set_description_str(label)
    pbar.write(f"{what}: {time.perf_counter() - start:.0f} s")


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
        if k != "step" and isinstance(v, int | float):  # Not names such as val_baseline.
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
