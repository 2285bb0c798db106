r"""Where a decode benchmark's time goes, per Python source line and per part of
the step (attention, dense matmuls, sampling, ...), from a `jax.profiler` trace.

    python -m experiments.profile_decode --config=bench_3m --batch=256 --mesh_data=2 \
        --json_out=runs/profile_3m.jsonl

Runs the same `generate` call as `experiments/bench_decode.py` (random prompts
of --prompt_len tokens, --new_tokens forced), once to compile and warm up,
then once under `jax.profiler.trace`. XLA writes the optimised HLO of every
compiled module (`--xla_dump_to`, set before JAX starts); `ttc_jax.profiling`
joins each executed op's trace time to the innermost project line that built
it. Output: one JSON line per part ("kind": "part"; `ms_per_step` = the part's
op time in the traced call / new_tokens, summed over devices, and its share of
all op time) and per source line ("kind": "line", the --top lines), then a
"summary" line with the call's wall time and the total op time. With
--mesh_data=2 two devices run at once, so op time can exceed wall time.

The trace and the HLO dump stay under --out_dir (default runs/profile_decode)
for a closer look (perfetto UI: ui.perfetto.dev).

On XLA:CPU some ops carry no source line: XLA rewrites the attention's
batched dots (per row and kv head, [rows, K, S, 1]) without metadata, so
they appear as "(no source) dot" with their shapes. On a GPU the same join
should work (the GPU runtime's kernel events carry hlo_module / hlo_op and
the dump is `*gpu_after_optimizations.txt`), but it has not been run there
yet: experiments/gpu_benchmarks.sh has the stage (`profile`).
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import time
from typing import Sequence

# Which part of a decode step a project function belongs to. Functions not
# listed count as "other" (loop bookkeeping, row stops, buffer writes).
PARTS = {
    "_masked_scores": "attention", "_weighted_values": "attention",
    "attention": "attention", "attention_partial": "attention", "_fused_product": "attention",
    "_cached_attention": "attention", "_merge_shared_levels": "attention",
    "prefix_attention": "attention",
    "_qkv": "dense", "_mlp": "dense", "unembed": "dense", "forward_hidden": "dense",
    "embed_tokens": "dense",
    "rms_norm": "norm+rope", "apply_rope": "norm+rope", "rope_inv_freq": "norm+rope",
    "_inverse_cdf": "sampling", "sample": "sampling", "row_uniforms": "sampling",
    "one": "sampling",
    "write_rows": "cache write", "resize": "cache resize",
    "prefill": "prefill",
}


def part_of(function: str) -> str:
  return PARTS.get(function, "other")


def run_profile(config: str, batch: int, prompt_len: int, new_tokens: int, mesh_data: int,
                out_dir: str, top: int, seed: int = 0, dtype: str = "float32") -> list[dict]:
  """Traces one generate call; returns the JSON lines (parts, top lines, summary)."""
  import jax
  import numpy as np

  from experiments import bench_decode
  from ttc_jax import profiling
  from ttc_jax.decode import Temperature, generate

  _, cfg, _, params, mesh = bench_decode.load_model(config, None, dtype, seed, mesh_data)
  prompts = np.random.default_rng(seed).integers(1, cfg.vocab_size, size=(batch, prompt_len))

  def call():
    out = generate(cfg, params, prompts, max_new_tokens=new_tokens, sampler=Temperature(1.0),
                   seed=seed, mesh=mesh)
    jax.block_until_ready((out.tokens, out.lengths))
    return out

  call()  # compile + warm up
  trace_dir = os.path.join(out_dir, "trace")
  shutil.rmtree(trace_dir, ignore_errors=True)
  with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
    start = time.perf_counter()
    out = call()
    wall = time.perf_counter() - start
  if not (np.asarray(out.lengths) == new_tokens).all():
    raise RuntimeError("generate stopped early: the profile would not match the benchmark")

  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  modules = profiling.load_hlo_dumps(os.path.join(out_dir, "hlo"))
  ops = {name: profiling.op_infos(text, [os.path.join(root, "ttc_jax"),
                                                   os.path.join(root, "kernels")])
               for name, text in modules.items()}
  times = profiling.op_times(profiling.load_trace_events(trace_dir), "jit_prefill_and_decode")
  if not times:
    raise RuntimeError("the trace has no op events of jit_prefill_and_decode")
  per_line = profiling.attribute(times, ops)
  total_us = sum(per_line.values())
  parts: dict[str, float] = collections.defaultdict(float)
  for loc, us in per_line.items():
    parts[part_of(loc.function) if isinstance(loc, profiling.SourceLocation)
          else " ".join(loc.split()[:3])] += us  # "(no source) <opcode>"
  common = dict(config=config, dtype=dtype, batch=batch, prompt_len=prompt_len, new_tokens=new_tokens,
                mesh_data=mesh_data, n_params=cfg.num_params())
  lines = []
  for part, us in sorted(parts.items(), key=lambda kv: -kv[1]):
    lines.append(dict(kind="part", part=part, ms_per_step=us / 1e3 / new_tokens,
                      share=us / total_us, **common))
  ranked = sorted(per_line.items(), key=lambda kv: -kv[1])[:top]
  for loc, us in ranked:
    label = loc.label(root) if isinstance(loc, profiling.SourceLocation) else loc
    lines.append(dict(kind="line", source=label, ms_per_step=us / 1e3 / new_tokens,
                      share=us / total_us, **common))
  lines.append(dict(kind="summary", wall_s=wall, op_s=total_us / 1e6,
                    wall_ms_per_step=wall * 1e3 / new_tokens,
                    op_ms_per_step=total_us / 1e3 / new_tokens, trace_dir=trace_dir,
                    device=jax.devices()[0].device_kind, cpu_model=bench_decode.cpu_model(),
                    cores=os.cpu_count(),
                    jax_version=jax.__version__, **common))
  return lines


def _define_flags():
  from absl import flags
  flags.DEFINE_string("config", "bench_3m", "Named config from ttc_jax.bench_configs.")
  flags.DEFINE_integer("batch", 256, "Rows decoded at once.")
  flags.DEFINE_integer("prompt_len", 32, "Prompt tokens per row.")
  flags.DEFINE_integer("new_tokens", 128, "Generated tokens per row (forced).")
  flags.DEFINE_integer("mesh_data", -1, "Devices the batch is split over, as in bench_decode "
                       "(-1: 2 XLA:CPU devices on a CPU, 1 on a GPU/TPU).")
  flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Params/activations.")
  flags.DEFINE_integer("top", 15, "Source lines to list.")
  flags.DEFINE_string("out_dir", "runs/profile_decode", "Trace and HLO dump folder.")
  flags.DEFINE_string("json_out", None, "JSONL output file (written atomically at the end).")


def main(argv: Sequence[str]) -> None:
  del argv
  from absl import flags
  f = flags.FLAGS
  if f.batch < 1 or f.prompt_len < 1 or f.new_tokens < 2:
    raise ValueError("need batch >= 1, prompt_len >= 1 and new_tokens >= 2")
  from ttc_jax import profiling
  hlo_dir = os.path.join(f.out_dir, "hlo")
  shutil.rmtree(hlo_dir, ignore_errors=True)
  # Before JAX starts a backend: XLA reads these once.
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " "
                             + profiling.dump_flags(hlo_dir)).strip()
  from experiments.bench_decode import set_mesh_devices
  lines = run_profile(f.config, f.batch, f.prompt_len, f.new_tokens,
                      set_mesh_devices(f.mesh_data), f.out_dir, f.top, dtype=f.dtype)
  for line in lines:
    print(json.dumps(line), flush=True)
  if f.json_out:
    from experiments.bench_decode import write_jsonl_atomic
    write_jsonl_atomic(f.json_out, lines)


if __name__ == "__main__":
  from absl import app
  _define_flags()
  app.run(main)
