"""Roofline of a compiled vrt-jax program: FLOPs, HBM traffic and per-part shares from its HLO.

  python benchmarks/roofline.py program.hlo.txt [--chip v5e] [--json out.json]
  python benchmarks/tpu_compile.py --preset 001_VRT_videosr_bi_REDS_6frames --program eval \\
      --topology v5e:2x4 [--hlo_dir hlo/]      # the same report for a program it compiles

Reads the optimized HLO text of a program compiled for a TPU (`compiled.as_text()`, what
`benchmarks/tpu_compile.py --hlo_dir` writes) and prints, per chip kind (`CHIPS`), the roofline
time max(FLOPs / peak bf16 FLOP/s, HBM bytes / HBM bandwidth), which bound dominates and the
ratio of the roofline to the compute bound, then a per-part table (`PARTS`: attention,
deformable alignment, MLP, norms, flows and warps, glue). `analyze()` and `print_report()` are
what tpu_compile uses. A roofline is a lower bound from a traffic model, not a prediction.

FLOPs: 2 x the multiply-adds of every dot and convolution, inside fusions too, each while body
times its trip count (libtpu's `cost_analysis()` counts a loop body once). A TPU lowers dots to
convolutions whose batch dims become lhs-dilated or padded windows, so a convolution is charged
only the window positions that land on real input elements, as XLA's HloCostAnalysis does (on
loop-free programs the two agree, elementwise work aside). A TPU custom kernel (Pallas, or
libtpu's own fused attention) counts the FLOPs of the cost estimate it carries; those without
one are listed. Elementwise and reduction work (the vector unit) is not counted: the peak the
roofline divides by is the matrix unit's.

HBM traffic is the model of the workplace tool shared/tools/hlo_roofline.py, one pass per
kernel: every top-level instruction of the entry computation, and of each while body times its
trip count, is charged its output plus operand bytes. Arrays in memory space S(1) (VMEM, on
chip) are free. Bytes are logical and padded to the TPU tiles of the layout (`T(8,128)` pads
the two most minor physical dims: an f32 minor dim of 10 occupies 128 lanes). A gather pays a
4 KiB tile per gathered slice, wherever its table lies (`gather_bytes`); a fusion parameter
used only by slices or gathers pays what they take; an in-place dynamic-update-slice pays its
update. Parts come from the op_name metadata (Flax module paths: the innermost module matching
`PART_RULES` decides); a prefetch (copy-start) or async slice, which has none, goes to the part
of the kernel consuming it, else of what it copies, else of the loop around it.

Where the two differ: a copy-start is charged its transfer once (the HBM side of destination
and source; the tool charges a prefetch's HBM source twice, as tuple output and as operand), a
slice from VMEM into VMEM is free (the tool charges its read), a conditional is charged its
heaviest branch (the tool: its first), and a fusion parameter is seen through bitcasts. On the
6-frame REDS eval for v5e (eval_001_..._v5e_2x4.hlo.txt of two revisions) the first two make
these totals lower: padded 194.1 vs 199.0 GB and 213.5 vs 218.0 GB (-2.5%, -2.0%), logical
40.1 vs 44.1 GB and 45.0 vs 48.5 GB (-9.0%, -7.2%: the doubled prefetches are 2.8 and 2.3 GB
of the tool's logical total, the VMEM slices 1.2 GB); every other kernel is charged the same.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import re
import sys
from typing import Any, TextIO

# Per-chip peak dense bf16 FLOP/s and HBM bandwidth (bytes/s), from the Google Cloud TPU docs
# (cloud.google.com/tpu/docs/v5e, /v4, /v5p, /v6e: "system architecture" tables).
CHIPS: dict[str, dict[str, float]] = {
    "v5e": {"flops": 197e12, "hbm_bw": 819e9},
    "v4": {"flops": 275e12, "hbm_bw": 1228e9},
    "v5p": {"flops": 459e12, "hbm_bw": 2765e9},
    "v6e": {"flops": 918e12, "hbm_bw": 1640e9},
}
PARTS = ("attention", "deformable alignment", "mlp", "norms", "flows and warps", "glue")
# Checked in order against each module of an op_name path, innermost module first, so that a
# norm inside an attention block is a norm and a convolution inside pa_deform is alignment.
# pa_fuse (the GEGLU that fuses the aligned frames) belongs to the alignment; the flow warps of
# _parallel_warping are plain functions (no module of their own), so the module itself is warps.
PART_RULES = (
    ("norms", re.compile(r"norm")),
    ("attention", re.compile(r"attn|attention")),
    ("mlp", re.compile(r"mlp|ffn")),
    ("deformable alignment", re.compile(r"deform|dcn|pa_fuse|_align\b")),
    ("flows and warps", re.compile(r"spynet|get_flows|flow|warp")),
)

_ARRAY = re.compile(r"\b(pred|bf16|f8e\w+|[suf]\d+|c64|c128)\[([<=0-9,]*)\](\{[^}]*\})?")
_INST = re.compile(r"^(ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*?)\s+([\w\-]+)\((.*)$")
_COMMENT = re.compile(r"/\*.*?\*/")
_COST_FLOPS = re.compile(r'"cost_estimate":\{"flops":"?(\d+)')
_HEAD = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s*\(")
# Instructions that move no data of their own (aliases, markers, the ends of async copies).
_FREE = {"parameter", "constant", "get-tuple-element", "tuple", "bitcast", "after-all",
         "partition-id", "replica-id", "opt-barrier", "add-dependency", "domain"}
_SLICES = ("slice", "dynamic-slice", "gather")
_TILE_BYTES = 4096  # One (8, 128) tile of 32-bit words.
# What a parameter passes through unchanged on its way to the slices that read it.
_VIEWS = ("bitcast",)


def dtype_bytes(dtype: str) -> float:
  """Bytes per element of an HLO element type (s4: half a byte)."""
  if dtype in ("pred", "bf16") or dtype.startswith("f8"):
    return {"pred": 1, "bf16": 2}.get(dtype, 1)
  return int(re.sub(r"\D", "", dtype)) / 8


class Inst:
  """One HLO instruction: `name = shape op(operands), attrs`."""

  __slots__ = ("name", "shape", "op", "operands", "attrs", "root", "op_name")

  def __init__(self, name: str, shape: str, op: str, call: str, root: bool):
    self.name, self.shape, self.op, self.root = name, shape, op, root
    args, self.attrs = _split_call(call)
    self.operands = [t.split()[-1].lstrip("%") for t in _split_top(args) if t.strip()]
    m = re.search(r'op_name="([^"]*)"', self.attrs)
    self.op_name = m.group(1).split(";")[0] if m else ""

  def attr(self, key: str) -> str | None:
    m = re.search(rf"\b{key}=%?([\w.\-]+)", self.attrs)
    return m.group(1) if m else None


def _split_call(text: str) -> tuple[str, str]:
  """('a, b', 'attrs') from 'a, b), attrs': the operand list ends at its closing parenthesis."""
  depth = 0
  for i, ch in enumerate(text):
    if ch in "([{":
      depth += 1
    elif ch in ")]}":
      if depth == 0:
        return text[:i], text[i + 1:].lstrip(", ")
      depth -= 1
  return text, ""


def _split_top(text: str) -> list[str]:
  """Splits at the commas outside brackets (shapes like f32[2,3]{1,0} hold commas)."""
  parts, depth, start = [], 0, 0
  for i, ch in enumerate(text):
    if ch in "([{":
      depth += 1
    elif ch in ")]}":
      depth -= 1
    elif ch == "," and depth == 0:
      parts.append(text[start:i])
      start = i + 1
  parts.append(text[start:])
  return parts


def parse_hlo(text: str) -> tuple[dict[str, list[Inst]], str]:
  """({computation name: instructions}, entry computation name) of an HLO module's text."""
  comps: dict[str, list[Inst]] = {}
  cur, entry = None, ""
  for line in text.splitlines():
    s = _COMMENT.sub("", line).strip()  # /*index=5*/ marks in long operand lists.
    inst = _INST.match(s)
    if s.endswith("{") and not inst:
      head = _HEAD.match(s)
      if head:
        cur = head.group(2)
        comps[cur] = []
        if head.group(1):
          entry = cur
      continue
    if s == "}":
      cur = None
    elif cur is not None and inst:
      root, name, shape, op, call = inst.groups()
      comps[cur].append(Inst(name, shape, op, call, bool(root)))
  if not entry:
    raise ValueError("no ENTRY computation in the HLO text")
  return comps, entry


def _layout(layout: str) -> tuple[list[int] | None, list[int], bool]:
  """(minor_to_major or None, first tile's sizes, in VMEM) of a layout like
  {1,0:T(8,128)(2,1)S(1)}."""
  m = re.match(r"\{([0-9,]*)", layout)
  order = [int(i) for i in m.group(1).split(",") if i] if m and m.group(1) else None
  tile = re.search(r"T\(([0-9,]+)\)", layout)
  sizes = [int(t) for t in tile.group(1).split(",")] if tile else []
  return order, sizes, "S(1)" in layout


def array_bytes(dtype: str, dims: str, layout: str, vmem_free: bool = True
                ) -> tuple[float, float]:
  """(logical, padded) bytes of one array; (0, 0) for one in VMEM (S(1)) when vmem_free.

  The first tile of the layout pads the most minor physical dims: its last size goes to the
  most minor dim, the one before to the next."""
  shape = [int(d.lstrip("<=")) for d in dims.split(",") if d]
  order, tile, vmem = _layout(layout or "")
  if vmem and vmem_free:
    return 0, 0
  elem = dtype_bytes(dtype)
  logical = elem * math.prod(shape)
  if not tile or not shape:
    return logical, logical
  order = order if order and len(order) == len(shape) else list(range(len(shape)))[::-1]
  padded = list(shape)
  for k, size in enumerate(reversed(tile)):
    if k < len(order):
      padded[order[k]] = -(-padded[order[k]] // size) * size
  return logical, elem * math.prod(padded)


def shape_bytes(shape: str, vmem_free: bool = True) -> tuple[float, float]:
  """(logical, padded) bytes of all arrays in a (tuple) shape's text."""
  lo = pa = 0.0
  for dtype, dims, layout in _ARRAY.findall(shape):
    a, b = array_bytes(dtype, dims, layout, vmem_free)
    lo, pa = lo + a, pa + b
  return lo, pa


def _arrays(shape: str) -> list[tuple[str, list[int], str]]:
  return [(dt, [int(d.lstrip("<=")) for d in dims.split(",") if d], layout)
          for dt, dims, layout in _ARRAY.findall(shape)]


def _ints(attrs: str, key: str) -> list[int]:
  m = re.search(rf"\b{key}=\{{([0-9,]*)\}}", attrs)
  return [int(v) for v in m.group(1).split(",") if v] if m else []


def gather_bytes(inst: Inst) -> tuple[float, float]:
  """(logical, tiled) bytes a gather reads from its table: a TPU moves whole (8, 128) tiles of
  32-bit words, so each gathered slice is charged 4 KiB per tile its two minor dims touch,
  however few of the tile's values it uses, and wherever the table lies (HBM or VMEM). A cost
  model for the row-at-a-time fetches rather than counted traffic: libtpu's cost analysis
  charges the same order (~5.6 KB per 10-float row)."""
  out = _arrays(inst.shape)
  sizes = _ints(inst.attrs, "slice_sizes")
  if not out:
    return 0, 0
  dtype, out_dims, _ = out[0]
  slices = math.prod(out_dims) // max(1, math.prod(sizes))
  lanes = sizes[-1] if sizes else 1
  sublanes = sizes[-2] if len(sizes) > 1 else 1
  tiles = -(-lanes // 128) * -(-sublanes // 8) * math.prod(sizes[:-2])
  return slices * math.prod(sizes) * dtype_bytes(dtype), slices * tiles * _TILE_BYTES


class Program:
  """An HLO module with its shapes and users indexed, and the rules that charge its kernels."""

  def __init__(self, text: str):
    self.comps, self.entry = parse_hlo(text)
    self.insts = {i.name: i for insts in self.comps.values() for i in insts}
    self.comp_of = {i.name: c for c, insts in self.comps.items() for i in insts}
    # The while loop (or other instruction) that runs each called computation.
    self.caller = {c: i for i in self.insts.values() for key in ("body", "calls", "to_apply")
                   if (c := i.attr(key))}
    self.users: dict[str, list[Inst]] = collections.defaultdict(list)
    for insts in self.comps.values():
      for i in insts:
        for o in i.operands:
          self.users[o].append(i)

  def shape(self, name: str) -> str:
    inst = self.insts.get(name)
    return inst.shape if inst else ""

  def root(self, comp: str) -> Inst | None:
    insts = self.comps.get(comp, [])
    return next((i for i in insts if i.root), insts[-1] if insts else None)

  # -- loops -------------------------------------------------------------------------------

  def trip_count(self, loop: Inst) -> int | None:
    """Iterations of a while loop: its known_trip_count, else `i < n` of its condition with the
    start value of i from the loop's initial tuple (0 when not a constant)."""
    m = re.search(r'"known_trip_count":\{"n":"(\d+)"', loop.attrs)
    if m:
      return int(m.group(1))
    cond = self.comps.get(loop.attr("condition") or "", [])
    root = self.root(loop.attr("condition") or "")
    consts = {i.name: i for i in cond if i.op == "constant"}
    if root is not None and root.op == "compare" and len(root.operands) == 2:
      a, b = root.operands
      direction = re.search(r"direction=(\w+)", root.attrs)
      direction = direction.group(1) if direction else ""
      if b in consts and a not in consts and direction in ("LT", "LE"):
        bound = _constant(consts[b])
        start = self._loop_start(loop, self.insts.get(a))
        if bound is not None:
          return max(0, bound - start + (direction == "LE"))
    values = [v for i in consts.values() if (v := _constant(i)) is not None]
    return max(values) if values else None

  def _loop_start(self, loop: Inst, counter: Inst | None) -> int:
    if counter is None or counter.op != "get-tuple-element" or not loop.operands:
      return 0
    index = re.search(r"index=(\d+)", counter.attrs)
    init = self.insts.get(loop.operands[0])
    if index is None or init is None or init.op != "tuple":
      return 0
    k = int(index.group(1))
    start = self.insts.get(init.operands[k]) if k < len(init.operands) else None
    value = _constant(start) if start is not None and start.op == "constant" else None
    return value or 0

  # -- HBM bytes ----------------------------------------------------------------------------

  def operand_bytes(self, inst: Inst) -> list[tuple[float, float]]:
    return [shape_bytes(self.shape(o)) for o in inst.operands]

  def kernel_bytes(self, inst: Inst) -> tuple[float, float]:
    """(logical, padded) HBM bytes one run of a top-level instruction reads and writes."""
    op, out = inst.op, shape_bytes(inst.shape)
    ins = self.operand_bytes(inst)
    if op == "copy-start":
      # (destination, source alias, context): the source is the operand, charged once.
      dest = _split_top(inst.shape.strip()[1:-1])[0] if inst.shape.startswith("(") else ""
      out = shape_bytes(dest)
    elif op == "slice-start":
      # ((source alias), destination, context): reads the slice, writes it unless on chip.
      parts = _split_top(inst.shape.strip()[1:-1]) if inst.shape.startswith("(") else [""]
      dest = parts[1] if len(parts) > 1 else ""
      read = (0, 0) if ins and ins[0] == (0, 0) else shape_bytes(dest, vmem_free=False)
      return _add(shape_bytes(dest), read)
    elif op == "dynamic-update-slice" and len(ins) > 1:
      # In place: reads the update and writes it into the buffer.
      upd = shape_bytes(self.shape(inst.operands[1]), vmem_free=False)
      write = (0, 0) if out == (0, 0) else upd
      return _add(ins[1], write, *ins[2:])
    elif op == "gather" and ins:
      return _add(out, gather_bytes(inst), *ins[1:])
    elif op in ("slice", "dynamic-slice") and ins:
      read = (0, 0) if ins[0] == (0, 0) else shape_bytes(inst.shape, vmem_free=False)
      return _add(out, read, *ins[1:])
    elif op == "fusion":
      ins, out = self.fusion_bytes(inst, ins, out)
    return _add(out, *ins)

  def fusion_bytes(self, fusion: Inst, ins: list[tuple[float, float]], out: tuple[float, float]
                   ) -> tuple[list[tuple[float, float]], tuple[float, float]]:
    """A fusion's operand and output bytes: a parameter read only by slices or gathers is
    charged what they take; the buffer of an in-place dynamic-update-slice root is not read,
    and only the update is written."""
    called = fusion.attr("calls") or ""
    params = {}
    for i in self.comps.get(called, []):
      if i.op == "parameter":
        m = re.match(r"\s*(\d+)", ",".join(i.operands))
        if m:
          params[i.name] = int(m.group(1))
    root = self.root(called)
    ins = list(ins)
    for pname, k in params.items():
      if k >= len(ins):
        continue
      uses = self._uses(pname)
      if not uses:
        continue
      if all(u.op in _SLICES and pos == 0 for u, pos in uses):
        took = [gather_bytes(u) if u.op == "gather" else
                shape_bytes(u.shape, vmem_free=False) for u, _ in uses]
        total = _add(*took)
        if any(u.op == "gather" for u, _ in uses):
          ins[k] = total  # Tiles fetched per slice: may exceed the table.
        else:
          ins[k] = (min(ins[k][0], total[0]), min(ins[k][1], total[1]))
      elif root is not None and root.op == "dynamic-update-slice" and \
          all(u is root and pos == 0 for u, pos in uses) and len(root.operands) > 1:
        upd = shape_bytes(self.shape(root.operands[1]), vmem_free=False)
        ins[k] = (0, 0)
        out = (min(out[0], upd[0]), min(out[1], upd[1]))
    return ins, out

  def _uses(self, name: str) -> list[tuple[Inst, int]]:
    """(user, operand position) of a value, looking through bitcasts of it."""
    uses = []
    for u in self.users.get(name, []):
      if u.op in _VIEWS:
        uses += self._uses(u.name)
      else:
        uses += [(u, pos) for pos, o in enumerate(u.operands) if o == name]
    return uses

  # -- FLOPs --------------------------------------------------------------------------------

  def flops(self, inst: Inst) -> float:
    """2 x multiply-adds of a dot or convolution; a TPU custom kernel's (Pallas, or libtpu's
    own fused attention) from the cost estimate it carries; else 0."""
    if inst.op == "custom-call":
      m = _COST_FLOPS.search(inst.attrs)
      return float(m.group(1)) if m else 0.0
    if inst.op == "dot":
      out = _arrays(inst.shape)
      lhs = _arrays(self.shape(inst.operands[0])) if inst.operands else []
      if not out or not lhs:
        return 0.0
      contract = math.prod(lhs[0][1][d] for d in _ints(inst.attrs, "lhs_contracting_dims"))
      return 2.0 * math.prod(out[0][1]) * contract
    if inst.op == "convolution":
      return conv_flops(inst, self.shape(inst.operands[0]), self.shape(inst.operands[1]))
    return 0.0

  # -- attribution --------------------------------------------------------------------------

  def op_name(self, inst: Inst) -> str:
    """The op_name that places a kernel in the model: its own; for a fusion without one, its
    fused root's or a fused instruction's; for a transfer without one (a prefetch), that of
    the nearest kernel consuming it, else of what it copies, else of the loop around it."""
    if inst.op_name:
      return inst.op_name
    called = inst.attr("calls")
    if called:
      root = self.root(called)
      if root is not None and root.op_name:
        return root.op_name
      for i in self.comps.get(called, []):
        if i.op_name.startswith("jit("):
          return i.op_name
    for step in (lambda i: self.users.get(i.name, []),
                 lambda i: [self.insts[o] for o in i.operands if o in self.insts]):
      seen, frontier = {inst.name}, [inst]
      for _ in range(8):  # Through copy-done, further copies, tuples, loop-carried values.
        nxt = []
        for i in frontier:
          for j in step(i):
            if j.op_name:
              return j.op_name
            if j.name not in seen:
              seen.add(j.name)
              nxt.append(j)
        frontier = nxt
    loop = self.caller.get(self.comp_of.get(inst.name, ""))
    return loop.op_name if loop is not None else ""


def _constant(inst: Inst) -> int | None:
  m = re.fullmatch(r"\s*(-?\d+)\s*", ",".join(inst.operands))
  return int(m.group(1)) if m else None


def _add(*pairs: tuple[float, float]) -> tuple[float, float]:
  return sum(p[0] for p in pairs), sum(p[1] for p in pairs)


def conv_flops(inst: Inst, lhs_shape: str, rhs_shape: str) -> float:
  """2 x multiply-adds of a convolution, counting per spatial dim only the (output, window)
  position pairs that land on a real input element: not on padding, nor on the holes of an lhs
  dilation (how a TPU writes a batched dot as a convolution)."""
  out, lhs, rhs = _arrays(inst.shape), _arrays(lhs_shape), _arrays(rhs_shape)
  labels = re.search(r"dim_labels=(\w+)_(\w+)->(\w+)", inst.attrs)
  if not (out and lhs and rhs and labels):
    return 0.0
  lhs_l, rhs_l, out_l = labels.groups()
  out_dims, lhs_dims, rhs_dims = out[0][1], lhs[0][1], rhs[0][1]
  window = re.search(r"window=\{([^}]*)\}", inst.attrs)
  win = dict(re.findall(r"(\w+)=([\w\-x]+)", window.group(1))) if window else {}

  def per_dim(key: str, n: int, default: int) -> list[int]:
    return [int(v) for v in win[key].split("x")] if key in win else [default] * n

  n = len([c for c in out_l if c.isdigit()])
  size = per_dim("size", n, 1)
  stride, lhs_dil, rhs_dil = (per_dim(k, n, 1) for k in ("stride", "lhs_dilate", "rhs_dilate"))
  pads = [tuple(int(v) for v in p.split("_")) for p in win["pad"].split("x")] if "pad" in win \
      else [(0, 0)] * n
  positions = 1
  for d in range(n):
    span = (lhs_dims[lhs_l.index(str(d))] - 1) * lhs_dil[d] + 1
    outs = out_dims[out_l.index(str(d))]
    valid = 0
    for k in range(size[d]):
      offset = k * rhs_dil[d] - pads[d][0]
      if lhs_dil[d] == 1:
        # Outputs o with 0 <= o * stride + offset < span.
        lo = -(offset // stride[d]) if offset < 0 else 0
        hi = (span - 1 - offset) // stride[d] if span - 1 - offset >= 0 else -1
        valid += max(0, min(outs - 1, hi) - lo + 1)
      else:
        valid += sum(1 for o in range(outs) if 0 <= (p := o * stride[d] + offset) < span
                     and p % lhs_dil[d] == 0)
    positions *= valid
  batch = out_dims[out_l.index("b")]
  features = out_dims[out_l.index("f")]
  in_features = rhs_dims[rhs_l.index("i")]
  return 2.0 * batch * features * in_features * positions


def classify(op_name: str) -> str:
  """The model part of an op_name (a Flax module path): the innermost module matching
  `PART_RULES`; 'glue' when none does (stem and reconstruction convs, reshapes, stage linears)."""
  # A parameter's op_name is its pytree path, p['stage1']['pa_deform']['kernel'].
  op_name = re.sub(r"\['([^']*)'\]", r"/\1", op_name)
  path = [p for p in op_name.split("/")[:-1] if p and not p.startswith("jit(")]
  for module in reversed(path):
    low = module.lower()
    for part, pattern in PART_RULES:
      if pattern.search(low):
        return part
  # Outside the modules above the model gathers only to warp (flow_warp is a function, so a
  # warp of the input frames or of a stage's features carries no module name of its own).
  if op_name.rsplit("/", 1)[-1] == "gather":
    return "flows and warps"
  return "glue"


def roofline(flops: float, hbm_bytes: float, chip: str) -> dict[str, Any]:
  """The roofline time of a program on one chip: max(compute bound, memory bound), seconds."""
  spec = CHIPS[chip]
  compute, memory = flops / spec["flops"], hbm_bytes / spec["hbm_bw"]
  time_s = max(compute, memory)
  return {"chip": chip, "compute_s": compute, "memory_s": memory, "time_s": time_s,
          "bound": "compute" if compute >= memory else "memory",
          "over_compute": time_s / compute if compute > 0 else None}


def analyze(hlo_text: str) -> dict[str, Any]:
  """FLOPs, HBM bytes (logical and padded), the roofline per chip (`roofline`) and the parts
  (`PARTS`: flops, bytes, bytes_padded, kernels) of a compiled program's optimized HLO text;
  JSON-serialisable. `loops`: each while loop with its trip count (None: unknown, run once)."""
  prog = Program(hlo_text)
  parts = {p: {"flops": 0.0, "bytes": 0.0, "bytes_padded": 0.0, "kernels": 0} for p in PARTS}
  loops: list[dict[str, Any]] = []

  def count_flops(comp: str, mult: float, part: str) -> None:
    # Dots and convolutions inside a fusion (and the fusions nested in it) run as often as the
    # fusion; each goes to the part of its own op_name, which is more specific.
    for i in prog.comps.get(comp, []):
      f = prog.flops(i)
      if f:
        parts[classify(i.op_name) if i.op_name else part]["flops"] += f * mult
      if i.op == "fusion":
        count_flops(i.attr("calls") or "", mult, part)

  opaque: list[str] = []

  def charge(comp: str, mult: float) -> None:
    for i in prog.comps.get(comp, []):
      if i.op == "while":
        n = prog.trip_count(i)
        loops.append({"name": i.name, "trips": n, "part": classify(i.op_name)})
        charge(i.attr("body") or "", mult * (n if n is not None else 1))
        continue
      if i.op == "conditional":
        branches = re.search(r"branch_computations=\{([^}]*)\}", i.attrs)
        names = re.findall(r"%?([\w.\-]+)", branches.group(1)) if branches else \
            [c for c in (i.attr("true_computation"), i.attr("false_computation")) if c]
        # One branch runs: charge the heaviest.
        best = max(names, key=lambda c: _weight(prog, c), default=None)
        if best:
          charge(best, mult)
        continue
      if i.op in ("call", "async-start"):
        charge(i.attr("to_apply") or i.attr("calls") or "", mult)
        continue
      if i.op in _FREE or i.op.endswith("-done"):
        continue
      if 'custom_call_target="tpu_custom_call"' in i.attrs and not _COST_FLOPS.search(i.attrs):
        opaque.append(i.name)
      part = classify(prog.op_name(i))
      lo, pa = prog.kernel_bytes(i)
      row = parts[part]
      row["bytes"] += lo * mult
      row["bytes_padded"] += pa * mult
      row["kernels"] += 1
      f = prog.flops(i)
      if f:
        row["flops"] += f * mult
      if i.op == "fusion":
        count_flops(i.attr("calls") or "", mult, part)

  charge(prog.entry, 1)
  total = {k: sum(p[k] for p in parts.values()) for k in ("flops", "bytes", "bytes_padded")}
  return {
      "flops": total["flops"], "hbm_bytes": total["bytes"],
      "hbm_bytes_padded": total["bytes_padded"],
      "roofline": {c: roofline(total["flops"], total["bytes_padded"], c) for c in CHIPS},
      "parts": parts, "loops": loops,
      "unknown_trip_counts": [lp["name"] for lp in loops if lp["trips"] is None],
      "kernels_without_flops": opaque,
  }


def _weight(prog: Program, comp: str) -> float:
  return sum(prog.kernel_bytes(i)[1] for i in prog.comps.get(comp, [])
             if i.op not in _FREE and not i.op.endswith("-done") and i.op != "while")


def print_report(result: dict[str, Any], chips: tuple[str, ...] | list[str] = tuple(CHIPS),
                 file: TextIO | None = None) -> None:
  """Markdown tables: the roofline per chip, then the parts (bytes as share of the padded total,
  milliseconds as the part's own roofline on the first chip)."""
  out = file or sys.stdout
  flops, padded = result["flops"], result["hbm_bytes_padded"]
  print(f"{flops / 1e12:.2f} TFLOP (dots and convolutions, loops counted in full), HBM "
        f"{padded / 1e9:.1f} GB padded to tiles ({result['hbm_bytes'] / 1e9:.1f} GB logical)",
        file=out)
  print("", file=out)
  print("| chip | compute ms | HBM ms | roofline ms | bound | roofline / compute |", file=out)
  print("|---|---|---|---|---|---|", file=out)
  for chip in chips:
    r = result["roofline"].get(chip) or roofline(flops, padded, chip)
    ratio = "-" if r["over_compute"] is None else f"{r['over_compute']:.2f}x"
    print(f"| {chip} | {r['compute_s'] * 1e3:.1f} | {r['memory_s'] * 1e3:.1f} | "
          f"{r['time_s'] * 1e3:.1f} | {r['bound']} | {ratio} |", file=out)
  print("", file=out)
  chip = chips[0]
  print(f"| part | TFLOP | FLOP share | GB padded | GB logical | HBM share | kernels | "
        f"{chip} ms |", file=out)
  print("|---|---|---|---|---|---|---|---|", file=out)
  for part in PARTS:
    p = result["parts"][part]
    r = roofline(p["flops"], p["bytes_padded"], chip)
    print(f"| {part} | {p['flops'] / 1e12:.2f} | {p['flops'] / max(flops, 1):.1%} | "
          f"{p['bytes_padded'] / 1e9:.1f} | {p['bytes'] / 1e9:.1f} | "
          f"{p['bytes_padded'] / max(padded, 1):.1%} | {p['kernels']} | "
          f"{r['time_s'] * 1e3:.1f} |", file=out)
  trips = [lp["trips"] for lp in result.get("loops", []) if lp["trips"] is not None]
  if trips:
    print(f"\n{len(trips)} while loops (trip counts {min(trips)}-{max(trips)}), "
          "counted in full; kernels: top-level instructions charged", file=out)
  if result.get("kernels_without_flops"):
    print(f"\n(custom kernels without a cost estimate, their FLOPs not counted: "
          f"{', '.join(result['kernels_without_flops'])})", file=out)
  if result["unknown_trip_counts"]:
    print(f"\n(trip count unknown, counted once: {', '.join(result['unknown_trip_counts'])})",
          file=out)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
  parser.add_argument("hlo", help="optimized HLO text (compiled.as_text(), tpu_compile --hlo_dir)")
  parser.add_argument("--chip", default="", help="list this chip first (its ms in the part "
                      f"table); one of {', '.join(CHIPS)}")
  parser.add_argument("--json", default="", help="also write the result to this file")
  args = parser.parse_args()
  if args.chip and args.chip not in CHIPS:
    parser.error(f"--chip: {args.chip!r} is not one of {', '.join(CHIPS)}")
  with open(args.hlo) as f:
    result = analyze(f.read())
  chips = [args.chip] + [c for c in CHIPS if c != args.chip] if args.chip else list(CHIPS)
  print_report(result, chips)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(result, f, indent=2)


if __name__ == "__main__":
  main()
