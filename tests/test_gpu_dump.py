"""Tests of experiments.benchmarking.gpu_dump: reading XLA:GPU dumps.

The dumps under tests/data/xla_gpu_dump are XLA:GPU's own output for a
small program with known products (make_fixtures.py there regenerates
them): an outer loop of 3 trips around an inner loop of 4 trips, two
(64 × 32)·(32 × 32) products per inner trip, one (64 × 32)·(32 × 48)
product per outer trip. `triton/` runs the inner body as a command buffer;
`cublas/` has cuBLAS calls and no command buffer.
"""

import os
import shutil

import pytest

from experiments.benchmarking import gpu_dump
from gmn_jax.errors import DataError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "data", "xla_gpu_dump")
TRITON = os.path.join(FIXTURES, "triton")
CUBLAS = os.path.join(FIXTURES, "cublas")
INNER_FLOP = 2 * (2 * 64 * 32 * 32)
OUTER_FLOP = 2 * 64 * 32 * 48
FLOP_PER_ITERATION = 4 * INNER_FLOP + OUTER_FLOP  # 1,245,184.


def _kernel(dump, name):
  [kernel] = [k for k in dump.kernels if k.name == name]
  return kernel


# --------------------------------------------------------------------------
# Parsing.


def test_array_shapes_and_bytes_of_tuples_and_layouts():
  text = "(f32[2,3]{1,0}, bf16[4]{0}, /*index=2*/s32[], pred[5])"
  assert gpu_dump.array_shapes(text) == [("f32", (2, 3)), ("bf16", (4,)), ("s32", ()),
                                   ("pred", (5,))]
  assert gpu_dump.type_bytes(text) == 2 * 3 * 4 + 4 * 2 + 4 + 5


def test_operand_arrays_takes_one_element_of_a_tuple():
  computations, _ = gpu_dump.parse_hlo(
      "ENTRY %main (p: (f32[2,3], s32[])) -> f32[2,3] {\n"
      "  %p = (f32[2,3]{1,0}, s32[]) parameter(0)\n"
      "  ROOT %c = f32[2,3]{1,0} copy(%p#0)\n"
      "}\n")
  scope = computations["main"]
  assert scope["c"].operands == ("p#0",)
  assert gpu_dump.operand_arrays("p#0", scope) == [("f32", (2, 3))]
  assert gpu_dump.operand_arrays("p#1", scope) == [("s32", ())]
  assert gpu_dump.operand_arrays("p", scope) == [("f32", (2, 3)), ("s32", ())]
  assert gpu_dump.operand_arrays("missing", scope) == []


def test_fusion_input_bytes_counts_what_a_fusion_takes():
  computations, _ = gpu_dump.parse_hlo(
      "%fused (t: (f32[100,10], f32[1000]), w: f32[10,10], big: f32[500,10]) -> f32[5,10] {\n"
      "  %t = (f32[100,10]{1,0}, f32[1000]{0}) parameter(0)\n"
      "  %w = f32[10,10]{1,0} parameter(1)\n"
      "  %big = f32[500,10]{1,0} parameter(2)\n"
      "  %a = f32[100,10]{1,0} get-tuple-element(%t), index=0\n"
      "  %a2 = f32[100,10]{1,0} get-tuple-element(%t), index=0\n"
      "  %s = f32[5,10]{1,0} slice(%big), slice={[0:5], [0:10]}\n"
      "  %d = f32[100,10]{1,0} dot(%a, %w), lhs_contracting_dims={1}, rhs_contracting_dims={0}\n"
      "  ROOT %r = f32[5,10]{1,0} add(%s, %s)\n"
      "}\n"
      "ENTRY %main () -> f32[] {\n  ROOT %z = f32[] constant(0)\n}\n")
  # Tuple element 0 once (not element 1, never taken), w whole, 5 rows of big.
  assert gpu_dump.fusion_input_bytes(computations["fused"]) == 4 * (100 * 10 + 10 * 10 + 5 * 10)
  [product] = gpu_dump.products_in("fused", computations)
  assert product == gpu_dump.Product((100, 10), 10, "f32")
  assert product.flop == 2 * 100 * 10 * 10


def test_parse_hlo_rejects_text_without_an_entry():
  with pytest.raises(DataError, match="ENTRY"):
    gpu_dump.parse_hlo("%f (x: f32[]) -> f32[] {\n  ROOT %x = f32[] parameter(0)\n}\n")


def test_parse_thunk_sequence_nests_loops_and_their_parts():
  with open(gpu_dump.dump_files(TRITON)["thunks"]) as f:
    thunks = {t.thunk_id: t for t in gpu_dump.parse_thunk_sequence(f.read())}
  assert thunks[3].kind == "kWhile" and thunks[3].loops == () and not thunks[3].is_leaf
  assert thunks[4].loops == ((3, "condition"),)  # The outer loop's condition.
  assert thunks[7].kind == "kWhile" and thunks[7].loops == ((3, "body"),)
  assert thunks[8].loops == ((3, "body"), (7, "condition"))
  assert thunks[10].loops == ((3, "body"), (7, "body"))  # A product of the inner body.
  assert thunks[10].parents == ((0, "kCommandBuffer"),) and thunks[10].is_leaf
  assert thunks[14].loops == ((3, "body"),) and thunks[14].parents == ()


# A hand-written dump: a loop of 10 trips whose body writes one row into a
# (100, 64) buffer in place, through a copy embedded in an async
# dynamic-slice wrapper (as XLA prints them), plus one launch nothing names.
_HLO = """\
%update (buffer: f32[100,64], row: f32[1,64], i: s32[]) -> f32[100,64] {
  %buffer = f32[100,64]{1,0} parameter(0)
  %row = f32[1,64]{1,0} parameter(1)
  %i = s32[] parameter(2)
  %zero = s32[] constant(0)
  ROOT %dus = f32[100,64]{1,0} dynamic-update-slice(%buffer, %row, %i, %zero)
}

%body (p: (s32[], f32[100,64], f32[1,64])) -> (s32[], f32[100,64], f32[1,64]) {
  %p = (s32[], f32[100,64]{1,0}, f32[1,64]{1,0}) parameter(0)
  %written = f32[100,64]{1,0} fusion(%p#1, %p#2, %p#0), kind=kLoop, calls=%update
  ROOT %t = (s32[], f32[100,64]{1,0}, f32[1,64]{1,0}) tuple(%p#0, %written, %p#2)
}

%cond (p: (s32[], f32[100,64], f32[1,64])) -> pred[] {
  %p = (s32[], f32[100,64]{1,0}, f32[1,64]{1,0}) parameter(0)
  ROOT %lt = pred[] compare(%p#0, %p#0), direction=LT
}

ENTRY %main (init: (s32[], f32[100,64], f32[1,64])) -> (s32[], f32[100,64], f32[1,64]) {
  %init = (s32[], f32[100,64]{1,0}, f32[1,64]{1,0}) parameter(0)
  ROOT %loop = (s32[], f32[100,64]{1,0}, f32[1,64]{1,0}) while(%init), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"10"}}
}
"""
_THUNKS = """\
001: kWhile [source | sink]
condition:
    002: kCustomKernel [source | sink] lt
  body:
    003: kAsyncStart [source | sink] stream=1
        004: kDynamicSliceFusion [source | sink] params=1, results=1
            005: kCopy [source | sink] kCopy
    006: kCustomKernel [source | sink] mystery
"""
_METADATA = "".join(
    f'thunk_metadata {{\n  thunk_info {{\n    profile_annotation: "{name}"\n'
    f'    thunk_id: {i}\n  }}\n}}\n'
    for i, name in ((1, "loop"), (2, "lt"), (3, "written-start"), (4, "written")))


def test_wrapped_thunks_take_their_wrappers_instruction_and_updates_are_in_place(tmp_path):
  (tmp_path / "module_0001.jit_x.sm_9.0a_gpu_after_optimizations.txt").write_text(_HLO)
  (tmp_path / "module_0001.jit_x.thunk_sequence.txt").write_text(_THUNKS)
  (tmp_path / "module_0001.jit_x.thunk_metadata.txt").write_text(_METADATA)
  thunks = {t.thunk_id: t for t in gpu_dump.parse_thunk_sequence(_THUNKS)}
  assert thunks[5].parents == ((3, "kAsyncStart"), (4, "kDynamicSliceFusion"))
  assert thunks[5].is_leaf and not thunks[4].is_leaf
  dump = gpu_dump.analyse_dump(str(tmp_path))
  assert dump.outer_trip_count == 10
  copy = _kernel(dump, "written")
  assert copy.thunk_id == 5 and copy.runs_per_iteration == 1
  # In place: the 64-float row read and written, plus the s32 index; not
  # the (100, 64) buffer.
  assert copy.bytes == 4 * 64 * 2 + 4
  assert dump.unnamed_launches_per_iteration == 1
  assert _kernel(dump, "").bytes == 0
  assert _kernel(dump, "lt").runs_per_iteration == pytest.approx(11 / 10)


def test_an_update_of_a_bitcast_parameter_is_in_place_too(tmp_path):
  # XLA updates a bitcast view of its buffer in place (the buffer assignment
  # of such fusions gives the result the operand's offset), so only the row
  # counts, as for a plain parameter.
  hlo = _HLO.replace(
      "%update (buffer: f32[100,64], row", "%update (buffer: f32[100,1,64], row").replace(
          "  %buffer = f32[100,64]{1,0} parameter(0)\n",
          "  %flat = f32[100,1,64]{2,1,0} parameter(0)\n"
          "  %buffer = f32[100,64]{1,0} bitcast(%flat)\n")
  assert "bitcast(%flat)" in hlo
  (tmp_path / "module_0001.jit_x.sm_9.0a_gpu_after_optimizations.txt").write_text(hlo)
  (tmp_path / "module_0001.jit_x.thunk_sequence.txt").write_text(_THUNKS)
  (tmp_path / "module_0001.jit_x.thunk_metadata.txt").write_text(_METADATA)
  assert _kernel(gpu_dump.analyse_dump(str(tmp_path)), "written").bytes == 4 * 64 * 2 + 4


# --------------------------------------------------------------------------
# Whole dumps against the program's known products and loops.


@pytest.mark.parametrize("directory", [TRITON, CUBLAS])
def test_flop_per_iteration_matches_the_closed_form(directory):
  dump = gpu_dump.analyse_dump(directory)
  assert dump.outer_trip_count == 3
  assert dump.flop_per_iteration == FLOP_PER_ITERATION
  products = sorted((k.runs_per_iteration, p.output_shape, p.contracted)
                    for k in dump.kernels for p in k.products)
  assert products == [(1.0, (64, 48), 32), (4.0, (64, 32), 32), (4.0, (64, 32), 32)]


def test_runs_per_iteration_follow_the_loops():
  dump = gpu_dump.analyse_dump(TRITON)
  runs = {k.thunk_id: k.runs_per_iteration for k in dump.kernels}
  assert runs[1] == pytest.approx(1 / 3)  # Before the outer loop: once per 3 iterations.
  assert runs[4] == pytest.approx(4 / 3)  # Outer condition: 3 + 1 times per call.
  assert runs[8] == 5  # Inner condition: 4 + 1 per outer trip.
  assert runs[10] == 4  # Inner body.
  assert runs[14] == 1  # Outer body.


def test_command_buffer_membership_and_host_launches():
  dump = gpu_dump.analyse_dump(TRITON)
  inside = {k.thunk_id for k in dump.kernels if k.in_command_buffer}
  assert inside == {9, 10, 11, 12, 13}  # The inner body, captured whole.
  assert dump.command_buffers_per_iteration == 4
  loose = sum(k.runs_per_iteration for k in dump.kernels if not k.in_command_buffer)
  assert dump.host_launches_per_iteration == pytest.approx(4 + loose)
  assert dump.launches_per_iteration == pytest.approx(
      sum(k.runs_per_iteration for k in dump.kernels))
  no_buffers = gpu_dump.analyse_dump(CUBLAS)
  assert no_buffers.command_buffers_per_iteration == 0
  assert no_buffers.host_launches_per_iteration == no_buffers.launches_per_iteration


def test_bytes_of_products_and_elementwise_kernels():
  f32 = 4
  cublas = gpu_dump.analyse_dump(CUBLAS)
  # x (64×32) · w (32×32) -> 64×32; the cuBLAS workspace is not traffic.
  assert _kernel(cublas, "custom-call.2").bytes == f32 * (64 * 32 + 32 * 32 + 64 * 32)
  # The outer body's x + sum(x·v): reads x and one scalar, writes x.
  assert _kernel(cublas, "loop_add_fusion.1").bytes == f32 * (2 * 64 * 32 + 1)
  triton = gpu_dump.analyse_dump(TRITON)
  assert _kernel(triton, "gemm_fusion_dot_general.5").bytes == f32 * (
      64 * 32 + 32 * 48 + 64 * 48)


def test_the_largest_module_of_a_folder_is_the_one_analysed(tmp_path):
  folder = tmp_path / "dump"
  shutil.copytree(TRITON, folder)
  # XLA also dumps the small modules it compiles while autotuning.
  (folder / "module_9999.autotune.sm_9.0a_gpu_after_optimizations.txt").write_text(
      "ENTRY %e () -> f32[] {\n  ROOT %z = f32[] constant(0)\n}\n")
  (folder / "module_9999.autotune.thunk_metadata.txt").write_text("")
  (folder / "module_9999.autotune.thunk_sequence.txt").write_text("")
  files = gpu_dump.dump_files(str(folder))
  assert all(os.path.basename(p).startswith("module_0001.jit_nested_loops.")
             for p in files.values())
  assert files["thunks"].endswith("after_thunk_passes.txt")
  assert gpu_dump.analyse_dump(str(folder)).flop_per_iteration == FLOP_PER_ITERATION


def test_missing_files_and_unknown_trip_counts_are_data_errors(tmp_path):
  with pytest.raises(DataError, match="thunk_sequence"):
    for name in os.listdir(TRITON):
      if "thunk_sequence" not in name:
        shutil.copy(os.path.join(TRITON, name), tmp_path)
    gpu_dump.analyse_dump(str(tmp_path))
  broken = tmp_path / "broken"
  shutil.copytree(TRITON, broken)
  [hlo] = [p for p in broken.iterdir() if p.name.endswith("after_optimizations.txt")]
  hlo.write_text(hlo.read_text().replace('"known_trip_count":{"n":"4"}', ""))
  with pytest.raises(DataError, match="known trip count"):
    gpu_dump.analyse_dump(str(broken))
