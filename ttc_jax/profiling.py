"""Where a jitted program's time goes: XLA op times from a `jax.profiler` trace,
mapped to the Python lines that built each op.

Two inputs, both written by XLA and JAX themselves:
* the optimised HLO text (`XLA_FLAGS=--xla_dump_to=DIR --xla_dump_hlo_as_text`,
  `*.cpu_after_optimizations.txt` etc.): every instruction's metadata names a
  `stack_frame_id`, and the module's FileNames / FunctionNames /
  FileLocations / StackFrames tables resolve it to (file, function, line);
* the trace (`jax.profiler.trace(dir, create_perfetto_trace=True)` ->
  `perfetto_trace.json.gz`): one complete event per executed op, whose args
  carry `hlo_module` and `hlo_op` (XLA:CPU's thunk executor and the GPU
  runtimes both emit them).

`op_times` sums the events per (module, op); `attribute` joins the two and
sums per source location, keeping the innermost frame inside the project, so
a fusion that `jnp.einsum` built inside `_masked_scores` is charged to
`_masked_scores`, not to jax's einsum. Pure functions over text and dicts:
tests feed them small hand-written inputs.
"""

from __future__ import annotations

import collections
import dataclasses
import glob
import gzip
import json
import os
import re
from typing import Iterable, Mapping

UNATTRIBUTED = "(no HLO dump)"

_TABLE_ENTRY = re.compile(r"^(\d+) (.*)$")
_FIELD = re.compile(r"(\w+)=(-?\d+)")
_NAME = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = ")
_OPCODE = re.compile(r"^\s*(?:ROOT )?%[\w.\-]+ = (.*?) ([\w\-]+)\(")
# Ops whose trace event spans the ops they run (counted there instead).
CONTAINER_OPCODES = frozenset({"while", "conditional", "call", "async-start", "async-done"})
_FRAME_ID = re.compile(r"stack_frame_id=(\d+)")


@dataclasses.dataclass(frozen=True)
class SourceLocation:
  file: str
  function: str
  line: int

  def label(self, root: str = "") -> str:
    path = os.path.relpath(self.file, root) if root and self.file.startswith(root) else self.file
    return f"{path}:{self.line} {self.function}"


def _tables(hlo_text: str) -> dict[str, dict[int, str]]:
  """The module's numbered tables ({name: {id: raw entry}}) before the first computation."""
  tables: dict[str, dict[int, str]] = {}
  current = None
  for line in hlo_text.splitlines():
    if line.startswith(("%", "ENTRY")):  # the first computation: tables are above it
      break
    stripped = line.strip()
    if stripped in ("FileNames", "FunctionNames", "FileLocations", "StackFrames"):
      current = tables.setdefault(stripped, {})
      continue
    entry = _TABLE_ENTRY.match(stripped)
    if current is not None and entry:
      current[int(entry.group(1))] = entry.group(2)
    elif not stripped:
      current = None
  return tables


def stack_frames(hlo_text: str) -> dict[int, tuple[SourceLocation, int]]:
  """{stack frame id: (its source location, parent frame id)} from a module's tables."""
  tables = _tables(hlo_text)
  files = {i: v.strip('"') for i, v in tables.get("FileNames", {}).items()}
  functions = {i: v.strip('"') for i, v in tables.get("FunctionNames", {}).items()}
  locations = {}
  for i, raw in tables.get("FileLocations", {}).items():
    fields = dict((k, int(v)) for k, v in _FIELD.findall(raw))
    locations[i] = SourceLocation(files.get(fields.get("file_name_id"), "?"),
                                  functions.get(fields.get("function_name_id"), "?"),
                                  fields.get("line", 0))
  frames = {}
  for i, raw in tables.get("StackFrames", {}).items():
    fields = dict((k, int(v)) for k, v in _FIELD.findall(raw))
    if fields.get("file_location_id") in locations:
      frames[i] = (locations[fields["file_location_id"]], fields.get("parent_frame_id", 0))
  return frames


def frame_chain(frames: Mapping[int, tuple[SourceLocation, int]], frame_id: int
                ) -> list[SourceLocation]:
  """Innermost first: the frame's location, then its callers' (cycles cut)."""
  chain, seen = [], set()
  while frame_id in frames and frame_id not in seen:
    seen.add(frame_id)
    location, frame_id = frames[frame_id]
    chain.append(location)
  return chain


@dataclasses.dataclass(frozen=True)
class OpInfo:
  opcode: str  # "fusion", "dot", "copy", "while", ...
  shape: str  # the result's shape, e.g. "f32[128,4,80,1]"
  location: SourceLocation | None  # innermost project frame; None: none (e.g. XLA-made copies)


def op_infos(hlo_text: str, project_roots: Iterable[str]) -> dict[str, OpInfo]:
  """{instruction name: its opcode and innermost source location under one of
  project_roots}, for every instruction of the module."""
  roots = tuple(os.path.join(os.path.abspath(r), "") for r in project_roots)
  frames = stack_frames(hlo_text)
  out: dict[str, OpInfo] = {}
  for line in hlo_text.splitlines():
    opcode = _OPCODE.match(line)
    if not opcode:
      continue
    name = _NAME.match(line).group(1)
    frame = _FRAME_ID.search(line.split("metadata={", 1)[1]) if "metadata={" in line else None
    chain = frame_chain(frames, int(frame.group(1))) if frame else []
    shape = re.sub(r"\{[^}]*\}", "", opcode.group(1))  # drop layouts
    out[name] = OpInfo(opcode.group(2), shape,
                       next((loc for loc in chain if loc.file.startswith(roots)), None))
  return out


def op_times(trace_events: Iterable[Mapping], module_prefix: str = "") -> dict[tuple[str, str], float]:
  """{(hlo module, hlo op): total microseconds} over the trace's complete events
  whose module starts with module_prefix (an op run N times counts N times)."""
  totals: dict[tuple[str, str], float] = collections.defaultdict(float)
  for event in trace_events:
    args = event.get("args") or {}
    if event.get("ph") != "X" or "hlo_op" not in args:
      continue
    module = args.get("hlo_module", "")
    if module.startswith(module_prefix):
      totals[(module, args["hlo_op"])] += float(event.get("dur", 0.0))
  return dict(totals)


def attribute(times: Mapping[tuple[str, str], float],
              ops: Mapping[str, Mapping[str, OpInfo]]) -> dict[SourceLocation | str, float]:
  """Microseconds per source location; `ops` is `op_infos` per module name.

  Container ops (a while loop, a call) are skipped: their time is their
  ops'. Ops without a project frame (XLA rewrites some dots and copies without
  metadata) go to "(no source) <opcode> <shape>", ops of a module without a
  dump to UNATTRIBUTED.
  """
  out: dict[SourceLocation | str, float] = collections.defaultdict(float)
  for (module, op), us in times.items():
    info = ops.get(module, {}).get(op)
    if info is None:
      out[UNATTRIBUTED] += us
    elif info.opcode not in CONTAINER_OPCODES:
      out[info.location if info.location is not None
          else f"(no source) {info.opcode} {info.shape}"] += us
  return dict(out)


def load_trace_events(trace_dir: str) -> list[dict]:
  """The events of the newest perfetto trace under trace_dir."""
  paths = sorted(glob.glob(os.path.join(trace_dir, "**", "perfetto_trace.json.gz"),
                           recursive=True), key=os.path.getmtime)
  if not paths:
    raise FileNotFoundError(f"no perfetto_trace.json.gz under {trace_dir}: trace with "
                            "jax.profiler.trace(dir, create_perfetto_trace=True)")
  with gzip.open(paths[-1], "rt") as f:
    data = json.load(f)
  return data["traceEvents"] if isinstance(data, dict) else data


def load_hlo_dumps(dump_dir: str) -> dict[str, str]:
  """{module name: optimised HLO text} from an XLA dump folder (the last
  compilation of a name wins: module ids count up)."""
  out = {}
  for path in sorted(glob.glob(os.path.join(dump_dir, "module_*after_optimizations.txt"))):
    name = os.path.basename(path).split(".")[1]
    with open(path) as f:
      out[name] = f.read()
  return out


def dump_flags(dump_dir: str) -> str:
  """XLA_FLAGS entries that make XLA write the optimised HLO text `load_hlo_dumps` reads."""
  return f"--xla_dump_to={dump_dir} --xla_dump_hlo_as_text --xla_dump_hlo_pass_re=^$"


__all__ = ["SourceLocation", "UNATTRIBUTED", "attribute", "dump_flags", "frame_chain",
           "load_hlo_dumps", "load_trace_events", "op_infos", "op_times", "stack_frames",
           "OpInfo", "CONTAINER_OPCODES"]
