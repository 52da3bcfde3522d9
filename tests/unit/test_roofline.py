"""benchmarks/roofline.py: FLOPs and HBM bytes of hand-written TPU HLO, parts, roofline."""

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

import roofline  # noqa: E402

ATTN = "jit(f)/VRT/VRT._restore/VRT.forward_features/stage1/residual_group1/attn/qkv_self"
DEFORM = "jit(f)/VRT/VRT._restore/VRT.forward_features/stage1/stage1._align/pa_deform"

# An attention dot in a fusion whose lhs has a minor dim of 10 (padded to 128 lanes), a loop
# of 4 iterations (1 <= i < 5) running a 3x3 convolution on a weight prefetched into VMEM
# (S(1)), and a gather of 50 rows of 10 floats.
PROGRAM = f"""HloModule test, is_scheduled=true

%fused_dot (param_0.1: f32[16,10], param_1.1: f32[10,256]) -> f32[16,256] {{
  %param_0.1 = f32[16,10]{{1,0:T(8,128)}} parameter(0)
  %param_1.1 = f32[10,256]{{1,0:T(8,128)}} parameter(1)
  ROOT %dot.1 = f32[16,256]{{1,0:T(8,128)}} dot(%param_0.1, %param_1.1), lhs_contracting_dims={{1}}, rhs_contracting_dims={{0}}, metadata={{op_name="{ATTN}/dot_general"}}
}}

%fused_conv (param_0.2: f32[1,8,8,16], param_1.2: f32[3,3,16,16]) -> f32[1,8,8,16] {{
  %param_0.2 = f32[1,8,8,16]{{3,2,1,0:T(8,128)}} parameter(0)
  %param_1.2 = f32[3,3,16,16]{{3,2,1,0:T(8,128)S(1)}} parameter(1)
  ROOT %conv.1 = f32[1,8,8,16]{{3,2,1,0:T(8,128)}} convolution(%param_0.2, %param_1.2), window={{size=3x3 pad=1_1x1_1}}, dim_labels=b01f_01io->b01f, metadata={{op_name="{DEFORM}/conv_offset/conv_general_dilated"}}
}}

%body (p.b: (s32[], f32[1,8,8,16], f32[3,3,16,16])) -> (s32[], f32[1,8,8,16], f32[3,3,16,16]) {{
  %p.b = (s32[]{{:T(128)}}, f32[1,8,8,16]{{3,2,1,0:T(8,128)}}, f32[3,3,16,16]{{3,2,1,0:T(8,128)S(1)}}) parameter(0)
  %i.b = s32[]{{:T(128)}} get-tuple-element(%p.b), index=0
  %x.b = f32[1,8,8,16]{{3,2,1,0:T(8,128)}} get-tuple-element(%p.b), index=1
  %w.b = f32[3,3,16,16]{{3,2,1,0:T(8,128)S(1)}} get-tuple-element(%p.b), index=2
  %one = s32[]{{:T(128)}} constant(1)
  %next = s32[]{{:T(128)}} add(%i.b, %one)
  %conv_fusion = f32[1,8,8,16]{{3,2,1,0:T(8,128)}} fusion(%x.b, /*index=1*/%w.b), kind=kOutput, calls=%fused_conv, metadata={{op_name="{DEFORM}/conv_offset/conv_general_dilated"}}
  ROOT %t.b = (s32[]{{:T(128)}}, f32[1,8,8,16]{{3,2,1,0:T(8,128)}}, f32[3,3,16,16]{{3,2,1,0:T(8,128)S(1)}}) tuple(%next, %conv_fusion, %w.b)
}}

%cond (p.c: (s32[], f32[1,8,8,16], f32[3,3,16,16])) -> pred[] {{
  %p.c = (s32[]{{:T(128)}}, f32[1,8,8,16]{{3,2,1,0:T(8,128)}}, f32[3,3,16,16]{{3,2,1,0:T(8,128)S(1)}}) parameter(0)
  %i.c = s32[]{{:T(128)}} get-tuple-element(%p.c), index=0
  %n = s32[]{{:T(128)}} constant(5)
  ROOT %lt = pred[]{{:T(512)}} compare(%i.c, %n), direction=LT
}}

ENTRY %main (a: f32[16,10], b: f32[10,256], x: f32[1,8,8,16], w: f32[3,3,16,16], table: f32[1000,10], idx: s32[50,1]) -> (f32[16,256], f32[1,8,8,16], f32[50,10]) {{
  %a = f32[16,10]{{1,0:T(8,128)}} parameter(0)
  %b = f32[10,256]{{1,0:T(8,128)}} parameter(1)
  %x = f32[1,8,8,16]{{3,2,1,0:T(8,128)}} parameter(2)
  %w = f32[3,3,16,16]{{3,2,1,0:T(8,128)}} parameter(3)
  %table = f32[1000,10]{{1,0:T(8,128)}} parameter(4)
  %idx = s32[50,1]{{1,0:T(8,128)}} parameter(5)
  %dot_fusion = f32[16,256]{{1,0:T(8,128)}} fusion(%a, %b), kind=kOutput, calls=%fused_dot, metadata={{op_name="{ATTN}/dot_general"}}
  %cs = (f32[3,3,16,16]{{3,2,1,0:T(8,128)S(1)}}, f32[3,3,16,16]{{3,2,1,0:T(8,128)}}, u32[]{{:S(2)}}) copy-start(%w)
  %cd = f32[3,3,16,16]{{3,2,1,0:T(8,128)S(1)}} copy-done(%cs)
  %start = s32[]{{:T(128)}} constant(1)
  %init = (s32[]{{:T(128)}}, f32[1,8,8,16]{{3,2,1,0:T(8,128)}}, f32[3,3,16,16]{{3,2,1,0:T(8,128)S(1)}}) tuple(%start, %x, %cd)
  %loop = (s32[]{{:T(128)}}, f32[1,8,8,16]{{3,2,1,0:T(8,128)}}, f32[3,3,16,16]{{3,2,1,0:T(8,128)S(1)}}) while(%init), condition=%cond, body=%body, metadata={{op_name="{DEFORM}/while"}}
  %y = f32[1,8,8,16]{{3,2,1,0:T(8,128)}} get-tuple-element(%loop), index=1
  %g = f32[50,10]{{1,0:T(8,128)}} gather(%table, %idx), offset_dims={{1}}, collapsed_slice_dims={{0}}, start_index_map={{0}}, index_vector_dim=1, slice_sizes={{1,10}}, metadata={{op_name="jit(f)/VRT/VRT._restore/vmap()/gather"}}
  ROOT %out = (f32[16,256]{{1,0:T(8,128)}}, f32[1,8,8,16]{{3,2,1,0:T(8,128)}}, f32[50,10]{{1,0:T(8,128)}}) tuple(%dot_fusion, %y, %g)
}}
"""  # noqa: E501 - HLO instructions are one line each.

# By hand. The dot: 2 * 16 * 256 * 10 FLOPs; it writes 16x256 f32 (16 KiB, tile-aligned) and
# reads a (640 B logical, 16x128 lanes = 8 KiB padded) and b (10 -> 16 sublanes: 10 KiB, 16 KiB).
DOT_FLOPS = 2 * 16 * 256 * 10
DOT_BYTES = (16384 + 640 + 10240, 16384 + 8192 + 16384)
# The convolution: per spatial dim 7 + 8 + 7 (output, tap) pairs off the zero padding, times
# 16 in x 16 out channels; it reads x and writes y (16 channels -> 128 lanes each), the weight
# in VMEM costs nothing. The loop counter's add: 4 bytes out, 2 x 4 in.
CONV_FLOPS = 2 * 16 * 16 * 22 * 22
CONV_BYTES = (2 * 4096 + 12, 2 * 8 * 8 * 128 * 4 + 12)
# The prefetch reads the weight from HBM once: 3x3x16x16 f32, its 16 channels padded to 128.
PREFETCH_BYTES = (9216, 3 * 3 * 16 * 128 * 4)
# The gather: 50 rows of 10 floats, each fetching a whole 4 KiB tile; its output (50 -> 56
# sublanes, 10 -> 128 lanes) and the indices (50x1 s32, padded alike).
GATHER_BYTES = (2000 + 2000 + 200, 56 * 128 * 4 + 50 * 4096 + 56 * 128 * 4)


def test_hand_written_program_flops_and_bytes():
  r = roofline.analyze(PROGRAM)
  assert [(lp["name"], lp["trips"]) for lp in r["loops"]] == [("loop", 4)]
  assert r["flops"] == DOT_FLOPS + 4 * CONV_FLOPS
  parts = r["parts"]
  assert (parts["attention"]["bytes"], parts["attention"]["bytes_padded"]) == DOT_BYTES
  assert parts["attention"]["flops"] == DOT_FLOPS
  deform = parts["deformable alignment"]
  assert deform["flops"] == 4 * CONV_FLOPS
  # The prefetch carries no metadata: it goes to the loop that consumes it.
  assert (deform["bytes"], deform["bytes_padded"]) == (
      PREFETCH_BYTES[0] + 4 * CONV_BYTES[0], PREFETCH_BYTES[1] + 4 * CONV_BYTES[1])
  warps = parts["flows and warps"]
  assert (warps["bytes"], warps["bytes_padded"]) == GATHER_BYTES
  assert r["hbm_bytes"] == DOT_BYTES[0] + deform["bytes"] + GATHER_BYTES[0]
  assert r["hbm_bytes_padded"] == DOT_BYTES[1] + deform["bytes_padded"] + GATHER_BYTES[1]
  assert parts["glue"]["bytes"] == parts["mlp"]["bytes"] == parts["norms"]["bytes"] == 0
  v5e = r["roofline"]["v5e"]
  assert v5e["time_s"] == pytest.approx(max(r["flops"] / 197e12, r["hbm_bytes_padded"] / 819e9))


SLICES = """HloModule slices

%fused_ds (param_0.3: f32[64,128], param_1.3: s32[]) -> f32[8,128] {
  %param_0.3 = f32[64,128]{1,0:T(8,128)} parameter(0)
  %param_1.3 = s32[]{:T(128)} parameter(1)
  %zero.3 = s32[]{:T(128)} constant(0)
  %ds = f32[8,128]{1,0:T(8,128)} dynamic-slice(%param_0.3, %param_1.3, %zero.3), dynamic_slice_sizes={8,128}
  ROOT %neg = f32[8,128]{1,0:T(8,128)} negate(%ds)
}

%fused_dus (param_0.4: f32[64,128], param_1.4: f32[8,128], param_2.4: s32[]) -> f32[64,128] {
  %param_0.4 = f32[64,128]{1,0:T(8,128)} parameter(0)
  %param_1.4 = f32[8,128]{1,0:T(8,128)} parameter(1)
  %param_2.4 = s32[]{:T(128)} parameter(2)
  %zero.4 = s32[]{:T(128)} constant(0)
  ROOT %dus = f32[64,128]{1,0:T(8,128)} dynamic-update-slice(%param_0.4, %param_1.4, %param_2.4, %zero.4)
}

ENTRY %main (buf: f32[64,128], i: s32[]) -> f32[64,128] {
  %buf = f32[64,128]{1,0:T(8,128)} parameter(0)
  %i = s32[]{:T(128)} parameter(1)
  %ds_fusion = f32[8,128]{1,0:T(8,128)} fusion(%buf, %i), kind=kLoop, calls=%fused_ds
  ROOT %dus_fusion = f32[64,128]{1,0:T(8,128)} fusion(%buf, %ds_fusion, %i), kind=kLoop, calls=%fused_dus
}
"""  # noqa: E501


def test_sliced_parameter_and_in_place_update_pay_what_they_touch():
  r = roofline.analyze(SLICES)
  # Slice: reads 8 of 64 rows (4 KiB), writes 4 KiB, reads the index. In-place update: reads
  # the 4 KiB update and the index, writes the update; the 32 KiB buffer is neither read nor
  # written whole.
  assert r["hbm_bytes"] == r["hbm_bytes_padded"] == (4096 + 4096 + 4) + (4096 + 4 + 4096)
  assert r["parts"]["glue"]["kernels"] == 2 and r["flops"] == 0


CUSTOM = """HloModule custom

ENTRY %main (q: bf16[8,128]) -> (f32[8,128], f32[8,128]) {
  %q = bf16[8,128]{1,0:T(8,128)(2,1)} parameter(0)
  %k1 = f32[8,128]{1,0:T(8,128)} custom-call(%q), custom_call_target="tpu_custom_call", backend_config={"custom_call_config":{"body":"TUxJUg==","cost_estimate":{"flops":"262144","transcendentals":"0","bytes_accessed":"6144"}}}
  %k2 = f32[8,128]{1,0:T(8,128)} custom-call(%q), custom_call_target="tpu_custom_call", backend_config={"custom_call_config":{"body":"TUxJUg=="}}
  ROOT %t = (f32[8,128]{1,0:T(8,128)}, f32[8,128]{1,0:T(8,128)}) tuple(%k1, %k2)
}
"""  # noqa: E501


def test_custom_kernels_count_their_cost_estimate():
  # A Pallas kernel (or libtpu's own fused attention) is opaque: its FLOPs come from the cost
  # estimate it carries, and one without is named so that the total is known to be short.
  r = roofline.analyze(CUSTOM)
  assert r["flops"] == 262144 and r["kernels_without_flops"] == ["k2"]
  assert r["hbm_bytes"] == 2 * (2048 + 4096)


def test_tile_padding_and_vmem():
  # f32[3,10] tiled (8,128): 8 sublanes x 128 lanes; a layout {0,1} makes dim 0 the minor one.
  assert roofline.array_bytes("f32", "3,10", "{1,0:T(8,128)}") == (120, 8 * 128 * 4)
  assert roofline.array_bytes("f32", "3,10", "{0,1:T(8,128)}") == (120, 16 * 128 * 4)
  assert roofline.array_bytes("bf16", "4,200", "{1,0:T(8,128)(2,1)}") == (1600, 8 * 256 * 2)
  assert roofline.array_bytes("f32", "3,10", "{1,0:T(8,128)S(1)}") == (0, 0)
  assert roofline.shape_bytes("(f32[3,10]{1,0:T(8,128)S(1)}, s32[8]{0:T(128)})") == (32, 512)


@pytest.mark.parametrize("op_name,part", [
    (f"{ATTN}/dot_general", "attention"),
    ("jit(<lambda>)/VRT/VRT._restore/VRT.forward_features/stage1/residual_group1/while/body/"
     "closed_call/pairs/even/even.attention_part/norm1/cond/branch_0_fun/reduce_sum", "norms"),
    ("jit(<lambda>)/VRT/VRT._restore/VRT.forward_features/stage3/residual_group2/while/body/"
     "closed_call/pairs/odd/odd.recomputed/cond/branch_0_fun/odd.ffn_part/mlp/fc11/dot_general",
     "mlp"),
    ("jit(<lambda>)/VRT/VRT._restore/VRT.forward_features/stage5/stage5._parallel_warping/"
     "stage5._align/pa_deform/conv_offset_6/cond/branch_0_fun/conv_general_dilated",
     "deformable alignment"),
    ("jit(<lambda>)/VRT/VRT._restore/VRT.forward_features/stage1/stage1._parallel_warping/"
     "pa_fuse/fc11/dot_general", "deformable alignment"),
    ("p['stage1']['pa_deform']['conv_offset_6']['kernel']", "deformable alignment"),
    ("jit(<lambda>)/VRT/VRT._restore/VRT.forward_features/stage1/stage1._parallel_warping/"
     "vmap()/gather", "flows and warps"),
    ("jit(<lambda>)/VRT/VRT._restore/VRT.get_flows/spynet/basic_module_0/basic_module_0/cond/"
     "branch_0_fun/conv_general_dilated", "flows and warps"),
    ("jit(<lambda>)/VRT/VRT._restore/VRT.forward_features/stage2/vmap()/gather",
     "flows and warps"),
    ("jit(<lambda>)/VRT/VRT._restore/conv_first/cond/branch_0_fun/conv_general_dilated", "glue"),
    ("jit(<lambda>)/VRT/VRT._restore/VRT.forward_features/stage4/linear1/dot_general", "glue"),
    ("", "glue"),
])
def test_parts_from_op_names(op_name, part):
  assert roofline.classify(op_name) == part


def test_roofline_time_and_bound():
  memory = roofline.roofline(197e12 * 0.5, 819e9 * 2, "v5e")  # 0.5 s of compute, 2 s of HBM.
  assert memory["time_s"] == pytest.approx(2.0) and memory["bound"] == "memory"
  assert memory["over_compute"] == pytest.approx(4.0)
  compute = roofline.roofline(918e12 * 3, 1640e9, "v6e")
  assert compute["time_s"] == pytest.approx(3.0) and compute["bound"] == "compute"
  assert compute["over_compute"] == pytest.approx(1.0)
  assert roofline.CHIPS["v4"] == {"flops": 275e12, "hbm_bw": 1228e9}
  assert roofline.roofline(0, 1e9, "v5p")["over_compute"] is None


def test_convolution_flops_match_xla_cost_analysis():
  """On loop-free programs compiled here, XLA's own count (CPU: dots stay dots) agrees,
  including the padding, lhs / rhs dilation and grouped convolutions a TPU makes of dots."""
  import jax
  import jax.numpy as jnp
  from jax import lax

  cases = [
      (lambda x, w: lax.conv_general_dilated(x, w, (2, 1), [(3, 1), (0, 2)], lhs_dilation=(2, 1),
                                             rhs_dilation=(1, 2)), (2, 3, 9, 7), (4, 3, 3, 3)),
      (lambda x, w: lax.conv_general_dilated(x, w, (1, 1), "SAME", feature_group_count=3),
       (2, 6, 9, 7), (6, 2, 3, 3)),
      (lambda x, y: jnp.einsum("bqd,bkd->bqk", x, y), (4, 16, 8), (4, 32, 8)),
  ]
  for fn, *shapes in cases:
    args = [jax.ShapeDtypeStruct(s, jnp.float32) for s in shapes]
    compiled = jax.jit(fn).lower(*args).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    assert roofline.analyze(compiled.as_text())["flops"] == cost["flops"]


def test_loop_flops_count_every_iteration():
  import jax
  import jax.numpy as jnp
  from jax import lax

  fn = lambda x, w: lax.fori_loop(2, 7, lambda i, x: jnp.tanh(x @ w), x)
  args = [jax.ShapeDtypeStruct(s, jnp.float32) for s in ((8, 16), (16, 16))]
  r = roofline.analyze(jax.jit(fn).lower(*args).compile().as_text())
  assert r["flops"] == 5 * 2 * 8 * 16 * 16


def test_report_and_cli(tmp_path, capsys, monkeypatch):
  path = tmp_path / "program.hlo.txt"
  path.write_text(PROGRAM)
  monkeypatch.setattr(sys, "argv", ["roofline.py", str(path), "--chip", "v6e", "--json",
                                    str(tmp_path / "out.json")])
  roofline.main()
  out = capsys.readouterr().out
  lines = out.splitlines()
  assert lines[4].startswith("| v6e | ") and "| memory |" in lines[4]
  assert any(line.startswith("| deformable alignment | 0.00 | ") for line in lines)
  assert "| glue | 0.00 | 0.0% | 0.0 | 0.0 | 0.0% | 0 |" in out
  saved = json.loads((tmp_path / "out.json").read_text())
  assert saved["hbm_bytes_padded"] == roofline.analyze(PROGRAM)["hbm_bytes_padded"]


def test_tpu_compile_reports_the_roofline_of_one_program(capsys, monkeypatch):
  """tpu_compile's table gets the roofline columns and, for one program, the part table."""
  import tpu_compile

  report = roofline.analyze(PROGRAM)
  report.pop("loops")
  row = {"program": "eval", "name": "001_VRT_videosr_bi_REDS_6frames", "topology": "v5e:2x4",
         "fits": "yes", "tflop_total": report["flops"] / 1e12,
         "hbm_gb": report["hbm_bytes_padded"] / 1e9, "roofline_ms": 1.5, "bound": "memory",
         "roofline": report}
  monkeypatch.setattr(tpu_compile.common, "run_worker", lambda *a, **k: dict(row))
  monkeypatch.setattr(sys, "argv", ["tpu_compile.py", "--preset",
                                    "001_VRT_videosr_bi_REDS_6frames", "--program", "eval"])
  tpu_compile.main()
  out = capsys.readouterr().out
  header = next(line for line in out.splitlines() if line.startswith("| program |"))
  assert "| TFLOP (all loops) | HBM GB (padded) | roofline ms (chip) | bound |" in header
  assert "| 0.00 | 0.0 | 1.5 | memory |" in out
  assert "| v5e | " in out and "| deformable alignment | " in out
