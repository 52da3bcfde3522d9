"""Checkpoints: training state (Orbax CheckpointManager) and model parameters (load / export).

Training checkpoints live in `<workdir>/checkpoints/<step>/` with two items: `state` (params,
optimizer state and step, an Orbax StandardSave) and `data` (the grain iterator state, so a
resumed run sees exactly the batches an uninterrupted run would). Saving is asynchronous; Orbax
coordinates the processes of a multi-host run.

Exported parameters (`export_params`, written by `vrt-convert`) are a directory with
`model_config.json` ({"preset": name or null, "model": VRT kwargs}) and `params/`, an Orbax
StandardCheckpointer checkpoint of the params pytree.
"""

from __future__ import annotations

import json
import os
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from flax import traverse_util

from vrt_jax import shapes, tmsa

CHECKPOINT_DIR = "checkpoints"
MODEL_CONFIG = "model_config.json"
PARAMS_DIR = "params"


class CorruptCheckpointError(ValueError):
  """A checkpoint that exists but cannot be read (truncated, corrupt, half-deleted).

  Distinct from a checkpoint of another configuration (plain ValueError): only this kind may be
  skipped in favour of an earlier checkpoint, and only when asked (`fallback`).
  """


# ---------------------------------------------------------------------------- training state


def make_manager(workdir: str, *, max_to_keep: int = 3, save_interval_steps: int = 1,
                 read_only: bool = False) -> ocp.CheckpointManager:
  """An async CheckpointManager over `<workdir>/checkpoints` with items `state` and `data`."""
  options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep, save_interval_steps=save_interval_steps, create=not read_only,
      read_only=read_only, enable_async_checkpointing=True)
  return ocp.CheckpointManager(
      os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR), options=options,
      item_handlers={"state": ocp.StandardCheckpointHandler(),
                     "data": grain.checkpoint.CheckpointHandler()})


def save_state(manager: ocp.CheckpointManager, step: int, state: Any, data_iter: Any, *,
               force: bool = False) -> bool:
  """Starts an async save of the train state and the data iterator at `step`."""
  return manager.save(step, force=force, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(data_iter)))


def data_saved_by(manager: ocp.CheckpointManager, step: int) -> list[str]:
  """The data-iterator files of checkpoint `step`: one `process_<i>-of-<n>.json` per process of
  the run that saved it."""
  data_dir = epath.Path(manager.directory) / str(step) / "data"
  return sorted(f.name for f in data_dir.glob("process_*-of-*.json")) if data_dir.exists() else []


def data_layout_matches(manager: ocp.CheckpointManager, step: int) -> bool:
  """Whether this process can rewind its data iterator from checkpoint `step`: the run that
  saved it had as many processes as this one (grain keeps one iterator state per process).
  A checkpoint without data files counts as matching: restoring it then reports it incomplete."""
  saved = data_saved_by(manager, step)
  return not saved or f"process_{jax.process_index()}-of-{jax.process_count()}.json" in saved


def restore_state(manager: ocp.CheckpointManager, step: int, abstract_state: Any,
                  data_iter: Any) -> Any:
  """Restores the train state onto the shardings of `abstract_state` and rewinds `data_iter`.

  abstract_state: pytree of jax.ShapeDtypeStruct with `sharding` set: the mesh and the process
  count may differ from the run that saved it (Orbax reshards the arrays). data_iter None: the
  state only (a data iterator saved by another number of processes cannot be rewound here).
  Raises ValueError naming the first leaf whose shape differs from the checkpoint.
  """
  path = os.path.join(str(manager.directory), str(step))
  try:
    saved = manager.item_metadata(step)["state"]
    tree = _tree_of(saved)
    if not _flat_shapes(tree):
      raise ValueError("its metadata lists no arrays")
  except Exception as e:  # Orbax raises several types for unreadable directories.
    raise CorruptCheckpointError(f"Cannot read the checkpoint at {path}: {e}") from e
  _check_shapes(tree, abstract_state, where=path)
  try:
    items = dict(state=ocp.args.StandardRestore(abstract_state))
    if data_iter is not None:
      items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
    restored = manager.restore(step, args=ocp.args.Composite(**items))
  except Exception as e:
    raise CorruptCheckpointError(f"The checkpoint at {path} is corrupt or incomplete: {e}") from e
  return restored["state"]


def saved_blocks_scanned(manager: ocp.CheckpointManager, step: int) -> bool | None:
  """Whether training checkpoint `step` holds its TMSA blocks scanned (`tmsa.stack_blocks`);
  None if its metadata cannot be read (restore_state then says why)."""
  try:
    return tmsa.is_scanned(_tree_of(manager.item_metadata(step)["state"])["params"])
  except Exception:  # noqa: BLE001 - an unreadable checkpoint is restore_state's to report.
    return None


def set_aside(manager: ocp.CheckpointManager, step: int) -> str:
  """Renames an unusable checkpoint `<step>` to `<step>.corrupt` (kept for inspection, no
  longer a step: the resumed run saves a new `<step>` in its place)."""
  src = os.path.join(str(manager.directory), str(step))
  dst = f"{src}.corrupt"
  n = 1
  while os.path.exists(dst):
    dst, n = f"{src}.corrupt{n}", n + 1
  if jax.process_index() == 0:
    os.rename(src, dst)
  ocp.multihost.sync_global_processes(f"vrt_jax_set_aside_{step}")
  manager.reload()
  return dst


# ---------------------------------------------------------------------------- parameters


# The checkpoint format's view of a model; vrt_jax.shapes has them, kept here by name.
example_input = shapes.example_input
abstract_params = shapes.abstract_params


def random_params(model: Any, seed: int = 0) -> Any:
  """Random float32 parameters of `model` (numpy arrays) without compiling `model.init`.

  On CPU `jax.jit(model.init)` compiles the whole network, as slow as a forward's first call;
  the shapes come from `abstract_params` instead. Values follow PyTorch's default init:
  kernels U(-1/sqrt(fan_in), 1/sqrt(fan_in)), LayerNorm scales 1, biases 0, other parameters
  (the relative-position-bias tables) N(0, 0.02). For benchmarks, tests and smoke runs;
  training starts from `model.init`.
  """
  rng = np.random.default_rng(seed)
  # Drawn in the per-block layout (fan-in without the stacking axis), then stacked if the model
  # scans its blocks: the same values either way.
  scanned = getattr(model, "scan_blocks", False)
  abstract = tmsa.unstack_blocks(abstract_params(model))

  def fill(path, leaf):
    name = str(getattr(path[-1], "key", path[-1]))
    if name == "bias":
      return np.zeros(leaf.shape, leaf.dtype)
    if name == "scale":
      return np.ones(leaf.shape, leaf.dtype)
    if name.endswith("kernel"):
      bound = 1 / np.sqrt(max(1, int(np.prod(leaf.shape[:-1]))))
      return rng.uniform(-bound, bound, leaf.shape).astype(leaf.dtype)
    return (0.02 * rng.standard_normal(leaf.shape)).astype(leaf.dtype)

  return tmsa.to_block_layout(jax.tree_util.tree_map_with_path(fill, abstract), scanned)


def export_params(directory: str, params: Any, model_kwargs: dict[str, Any],
                  preset: str | None = None) -> None:
  """Writes `directory/model_config.json` and `directory/params/` (Orbax StandardCheckpointer).

  `load_params(directory, vrt_jax.VRT(**model_kwargs))` reads it back.
  """
  directory = os.path.abspath(directory)
  if os.path.exists(os.path.join(directory, PARAMS_DIR)):
    raise ValueError(f"{directory} already holds exported params; choose a new directory")
  os.makedirs(directory, exist_ok=True)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(os.path.join(directory, PARAMS_DIR), params)
    ckptr.wait_until_finished()
  if jax.process_index() == 0:
    with open(os.path.join(directory, MODEL_CONFIG), "w") as f:
      json.dump({"preset": preset, "model": _jsonable(model_kwargs)}, f, indent=2, sort_keys=True)


def load_params(path: str, model: Any, *, step: int | None = None,
                fallback: bool = False) -> Any:
  """Parameters for `model` from an official .pth, an exported directory or a training workdir.

  path: an official VRT `.pth` file; a directory written by `export_params` (`model_config.json`
  and `params/`); a training workdir or its `checkpoints/` directory (the latest step, or `step`).
  fallback: for a workdir, if the chosen checkpoint is unreadable (CorruptCheckpointError), use
  the latest earlier one that loads, with a warning naming the skipped steps. Off by default: an
  unreadable checkpoint is an error, never silently replaced by an older one.
  Whatever the saved layout of the TMSA blocks (scanned or per block, `tmsa.stack_blocks`), the
  params come in `model`'s layout. Returns a params pytree of numpy arrays. Raises ValueError
  for a missing or unreadable checkpoint or one whose shapes do not fit `model` (naming the
  first mismatching leaf).
  """
  if not os.path.exists(path):
    raise ValueError(f"No checkpoint at {path}")
  target = abstract_params(model)
  scanned = getattr(model, "scan_blocks", False)
  if os.path.isfile(path):
    if not path.endswith((".pth", ".pt")):
      raise ValueError(f"{path} is a file but not a PyTorch .pth checkpoint; expected a .pth, "
                       "an exported params directory or a training workdir")
    from vrt_jax import convert  # torch-free, but only needed here
    try:
      state_dict = convert.load_torch_checkpoint(path)
    except Exception as e:
      raise ValueError(f"Cannot read the PyTorch checkpoint {path}: {e}") from e
    params = convert.from_torch(state_dict, model)["params"]
    _check_shapes(params, target, where=path)
    return params

  if os.path.isdir(os.path.join(path, PARAMS_DIR)):
    item = os.path.join(os.path.abspath(path), PARAMS_DIR)
    with ocp.StandardCheckpointer() as ckptr:
      try:
        saved = _tree_of(ckptr.metadata(item))
      except Exception as e:
        raise ValueError(f"Cannot read the exported params at {item}: {e}") from e
      saved_target = _in_layout_of(target, saved)
      _check_shapes(saved, saved_target, where=item)
      try:
        return tmsa.to_block_layout(ckptr.restore(item, _numpy_target(saved_target)), scanned)
      except Exception as e:
        raise ValueError(f"The exported params at {item} are corrupt or incomplete: {e}") from e

  ckpt_dir = path
  if os.path.isdir(os.path.join(path, CHECKPOINT_DIR)):
    ckpt_dir = os.path.join(path, CHECKPOINT_DIR)
  steps = sorted(int(d) for d in os.listdir(ckpt_dir)
                 if d.isdigit() and os.path.isdir(os.path.join(ckpt_dir, d, "state")))
  if not steps:
    raise ValueError(f"{path} holds no checkpoint: expected a .pth file, a directory with "
                     f"{MODEL_CONFIG} and {PARAMS_DIR}/, or a training workdir with "
                     f"{CHECKPOINT_DIR}/<step>/state")
  if step is not None and step not in steps:
    raise ValueError(f"{ckpt_dir} has no checkpoint for step {step}; it has steps {steps}")
  chosen = steps[-1] if step is None else step
  earlier = [s for s in reversed(steps) if s < chosen]
  for candidate in [chosen] + (earlier if fallback else []):
    item = os.path.join(os.path.abspath(ckpt_dir), str(candidate), "state")
    try:
      params = tmsa.to_block_layout(_load_training_params(item, target), scanned)
    except CorruptCheckpointError as e:
      if not fallback:
        hint = (f" Earlier checkpoints: steps {sorted(earlier)}; load with fallback=True "
                "(python -m vrt_jax.restore --checkpoint_fallback) to use the latest of them "
                "that loads." if earlier else "")
        raise CorruptCheckpointError(f"{e}{hint}") from e
      logging.warning("Skipping unreadable checkpoint step %d (%s)", candidate, e)
      continue
    if candidate != chosen:
      logging.warning("Loaded step %d of %s instead of the unreadable step %d", candidate,
                      ckpt_dir, chosen)
    return params
  raise CorruptCheckpointError(f"No readable checkpoint in {ckpt_dir} (tried steps "
                               f"{[chosen] + earlier})")


def _load_training_params(item: str, target: Any) -> Any:
  """The params of one training checkpoint's `state` item, in the layout they were saved in."""
  with ocp.PyTreeCheckpointer() as ckptr:
    try:
      saved = _tree_of(ckptr.metadata(item))["params"]
    except Exception as e:
      raise CorruptCheckpointError(
          f"The training checkpoint at {item} is corrupt or incomplete: its metadata cannot be "
          f"read ({type(e).__name__}: {e})") from e
    target = _in_layout_of(target, saved)
    numpy_target = {"params": _numpy_target(target)}
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray),
                                numpy_target)
    _check_shapes(saved, target, where=item)
    try:
      restored = ckptr.restore(item, args=ocp.args.PyTreeRestore(
          item=numpy_target, restore_args=restore_args, partial_restore=True))
    except Exception as e:
      raise CorruptCheckpointError(
          f"The training checkpoint at {item} is corrupt or incomplete: {e}") from e
  return restored["params"]


def read_model_config(directory: str) -> dict[str, Any]:
  """The {"preset": ..., "model": {...}} record of an exported params directory."""
  with open(os.path.join(directory, MODEL_CONFIG)) as f:
    return json.load(f)


# ---------------------------------------------------------------------------- helpers


def _tree_of(metadata: Any) -> Any:
  """The pytree of array metadata inside what Orbax's metadata() calls return."""
  for attr in ("item_metadata", "tree"):
    if hasattr(metadata, attr) and getattr(metadata, attr) is not None:
      metadata = getattr(metadata, attr)
  return metadata


def _flat_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
  """{'a/b/0/c': shape} with dict keys, attribute names and indices alike (Orbax stores
  namedtuples as dicts and tuples as lists)."""
  def name(entry):
    for attr in ("key", "name", "idx"):
      if hasattr(entry, attr):
        return str(getattr(entry, attr))
    return str(entry)

  leaves = jax.tree_util.tree_leaves_with_path(tree, is_leaf=lambda x: hasattr(x, "shape"))
  return {"/".join(name(e) for e in path): tuple(leaf.shape) for path, leaf in leaves
          if hasattr(leaf, "shape")}


def _check_shapes(saved: Any, expected: Any, *, where: str) -> None:
  saved_shapes, expected_shapes = _flat_shapes(saved), _flat_shapes(expected)
  if not saved_shapes:
    raise CorruptCheckpointError(
        f"Checkpoint {where} is corrupt or incomplete: its metadata lists no arrays")
  # Params first: a model/config mismatch shows there more readably than in optimizer moments.
  order = sorted(expected_shapes, key=lambda k: not k.startswith("params/"))
  for key in order:
    shape = expected_shapes[key]
    if key not in saved_shapes:
      raise ValueError(f"Checkpoint {where} does not match the model/config: it has no leaf "
                       f"{key!r} (expected shape {shape})")
    if saved_shapes[key] != shape:
      raise ValueError(f"Checkpoint {where} does not match the model/config: leaf {key!r} has "
                       f"shape {saved_shapes[key]} in the checkpoint but {shape} is expected")
  extra = [k for k in saved_shapes if k not in expected_shapes]
  if extra:
    raise ValueError(f"Checkpoint {where} does not match the model/config: unexpected leaf "
                     f"{extra[0]!r} (and {len(extra) - 1} more)")


def _in_layout_of(target: Any, saved: Any) -> Any:
  """`target` (a params tree) in the TMSA block layout of the saved params tree `saved`."""
  return tmsa.to_block_layout(target, tmsa.is_scanned(saved))


def _numpy_target(tree: Any) -> Any:
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


def _jsonable(value: Any) -> Any:
  if hasattr(value, "to_dict"):  # ml_collections.ConfigDict
    value = value.to_dict()
  if isinstance(value, dict):
    return {str(k): _jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_jsonable(v) for v in value]
  if isinstance(value, np.generic):
    return value.item()
  return value


def transfer_params(source: Any, target: Any) -> tuple[Any, list[str]]:
  """Copies `source` leaves into `target` where path and shape agree (fine-tuning another config).

  Returns the new params and the '/'-joined paths of target leaves that kept their own value
  (absent from source or of another shape), so the caller can report them.
  """
  flat_src = traverse_util.flatten_dict(tmsa.to_block_layout(source, tmsa.is_scanned(target)))
  flat_tgt = traverse_util.flatten_dict(target)
  out, fresh = {}, []
  for path, value in flat_tgt.items():
    src = flat_src.get(path)
    if src is not None and np.shape(src) == np.shape(value):
      out[path] = np.asarray(src, dtype=np.asarray(value).dtype)
    else:
      out[path] = value
      fresh.append("/".join(path))
  return traverse_util.unflatten_dict(out), fresh
