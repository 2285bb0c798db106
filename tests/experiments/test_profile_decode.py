"""ttc_jax.profiling (HLO tables + trace events -> time per source line) and
experiments/profile_decode.py end to end on the smoke model."""

import json
import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

from experiments import profile_decode  # noqa: E402
from ttc_jax import profiling  # noqa: E402

# A module as XLA prints it: tables first, then computations. Frame 3 is
# inside the project (/proj/model.py), called from frame 2 (a jax file),
# called from frame 1 (the project's caller); frame 4 cycles to itself.
HLO = """HloModule jit_step, is_scheduled=true

FileNames
1 "/proj/model.py"
2 "/site-packages/jax/_src/numpy/einsum.py"

FunctionNames
1 "caller"
2 "einsum"
3 "attention"

FileLocations
1 {file_name_id=1 function_name_id=1 line=10 end_line=10 column=2 end_column=9}
2 {file_name_id=2 function_name_id=2 line=300 end_line=300 column=0 end_column=5}
3 {file_name_id=1 function_name_id=3 line=42 end_line=42 column=4 end_column=20}

StackFrames
1 {file_location_id=1 parent_frame_id=1}
2 {file_location_id=2 parent_frame_id=3}
3 {file_location_id=3 parent_frame_id=1}
4 {file_location_id=2 parent_frame_id=4}

%body (p: f32[4]) -> f32[4] {
  %p = f32[4]{0} parameter(0)
  %fusion.1 = f32[4]{0} fusion(%p), kind=kLoop, calls=%c, metadata={op_name="jit(step)/dot" stack_frame_id=2}
  ROOT %copy.2 = f32[4]{0} copy(%fusion.1)
}

ENTRY %main (a: f32[4]) -> f32[4] {
  %a = f32[4]{0} parameter(0)
  %dot.3 = f32[2,4,8,1]{3,2,1,0} dot(%a, %a), lhs_batch_dims={0,1}, lhs_contracting_dims={3}
  %other.4 = f32[4]{0} add(%a, %a), metadata={op_name="jit(step)/add" stack_frame_id=4}
  %caller.5 = f32[4]{0} add(%a, %a), metadata={op_name="jit(step)/add" stack_frame_id=1}
  ROOT %while.6 = (s32[], f32[4]{0}) while(%t), condition=%cond, body=%body, metadata={op_name="jit(step)/while" stack_frame_id=1}
}
"""


def _event(op, dur, module="jit_step"):
  return {"ph": "X", "name": op, "dur": dur, "args": {"hlo_module": module, "hlo_op": op}}


def test_frames_resolve_to_the_innermost_project_line():
  frames = profiling.stack_frames(HLO)
  chain = profiling.frame_chain(frames, 2)
  assert [(c.function, c.line) for c in chain] == [("einsum", 300), ("attention", 42),
                                                    ("caller", 10)]
  assert [c.function for c in profiling.frame_chain(frames, 4)] == ["einsum"]  # cycle cut
  ops = profiling.op_infos(HLO, ["/proj"])
  assert ops["fusion.1"] == profiling.OpInfo(
      "fusion", "f32[4]", profiling.SourceLocation("/proj/model.py", "attention", 42))
  assert ops["dot.3"] == profiling.OpInfo("dot", "f32[2,4,8,1]", None)  # no metadata
  assert ops["copy.2"].location is None and ops["while.6"].opcode == "while"
  assert ops["caller.5"].location.function == "caller"
  assert ops["other.4"].location is None  # its frames never enter /proj


def test_attribute_sums_per_line_and_skips_loops():
  events = [_event("fusion.1", 3.0), _event("fusion.1", 2.0), _event("dot.3", 7.0),
            _event("while.6", 100.0), _event("copy.2", 1.0), _event("caller.5", 0.5),
            _event("x.1", 4.0, module="jit_other"), {"ph": "X", "name": "host", "dur": 9.0},
            {"ph": "i", "name": "fusion.1", "args": {"hlo_module": "jit_step",
                                                     "hlo_op": "fusion.1"}}]
  times = profiling.op_times(events, "jit_step")
  assert times == {("jit_step", "fusion.1"): 5.0, ("jit_step", "dot.3"): 7.0,
                   ("jit_step", "while.6"): 100.0, ("jit_step", "copy.2"): 1.0,
                   ("jit_step", "caller.5"): 0.5}
  per_line = profiling.attribute(times, {"jit_step": profiling.op_infos(HLO, ["/proj"])})
  attention = profiling.SourceLocation("/proj/model.py", "attention", 42)
  assert per_line == {attention: 5.0, "(no source) dot f32[2,4,8,1]": 7.0,
                      "(no source) copy f32[4]": 1.0,
                      profiling.SourceLocation("/proj/model.py", "caller", 10): 0.5}
  assert attention.label("/proj") == "model.py:42 attention"
  everything = profiling.attribute(profiling.op_times(events), {})
  assert everything == {profiling.UNATTRIBUTED: 5.0 + 7.0 + 100.0 + 1.0 + 0.5 + 4.0}


def test_missing_trace_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="perfetto_trace"):
    profiling.load_trace_events(str(tmp_path))


def _profile_job(job):
  """Background job: the profiler script on the smoke model (XLA_FLAGS must be
  set before JAX starts, so it needs its own process)."""
  out = job.dir / "profile.jsonl"
  job.run([sys.executable, "-m", "experiments.profile_decode", "--config=smoke", "--batch=4",
           "--prompt_len=5", "--new_tokens=6", "--mesh_data=1", "--top=40",
           f"--out_dir={job.dir / 'run'}", f"--json_out={out}"], timeout=300)
  return [json.loads(line) for line in out.read_text().splitlines()]


@pytest.mark.background("_profile_job")
def test_profile_decode_charges_the_step_to_model_lines(background):
  lines = background.result(_profile_job)
  parts = {l["part"]: l for l in lines if l["kind"] == "part"}
  sources = [l["source"] for l in lines if l["kind"] == "line"]
  (summary,) = [l for l in lines if l["kind"] == "summary"]
  assert {"dense", "attention", "sampling"} <= set(parts), sorted(parts)
  assert abs(sum(p["share"] for p in parts.values()) - 1.0) < 1e-6
  assert summary["op_s"] > 0 and summary["wall_s"] > 0
  assert summary["config"] == "smoke" and summary["new_tokens"] == 6
  assert any(s.startswith("ttc_jax/model/transformer.py:") and s.endswith(" _mlp")
             for s in sources), sources
  # Loops are not double counted: one device, so op time fits in the wall time.
  assert summary["op_s"] <= summary["wall_s"]
