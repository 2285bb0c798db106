"""Trains a policy LM on the built-in task, from a named preset.

  python -m experiments.train_policy --preset=smoke --out_dir=runs/smoke
  python -m experiments.train_policy --preset=small --out_dir=runs/small
  python -m experiments.train_policy --preset=large --out_dir=runs/large

out_dir receives orbax checkpoints (checkpoints/<step>/), the tokenizer
(tokenizer.model), a JSON sidecar (policy.json) and metrics.jsonl. Restarting
the same command resumes from the newest good checkpoint (--resume, default
on) and ends bit-identical to an uninterrupted run.
"""

from __future__ import annotations

import json

from absl import app, flags, logging

FLAGS = flags.FLAGS
flags.DEFINE_string("preset", "smoke", "Preset name (ttc_jax.train.presets): smoke, small, large.")
flags.DEFINE_string("out_dir", None, "Run directory (checkpoints, tokenizer, metrics).")
flags.DEFINE_integer("steps", None, "Override: optimizer steps (else from the token budget).")
flags.DEFINE_integer("train_tokens", None, "Override: token budget (real tokens).")
flags.DEFINE_integer("batch_size", None, "Override: rows per optimizer step.")
flags.DEFINE_float("lr", None, "Override: peak learning rate.")
flags.DEFINE_integer("grad_accum", None, "Override: micro-batches per step.")
flags.DEFINE_integer("eval_every", None, "Override: eval loss every K steps (0: end only).")
flags.DEFINE_integer("ckpt_every", None, "Override: checkpoint every K steps (0: end only).")
flags.DEFINE_integer("log_every", None, "Override: metrics line every K steps.")
flags.DEFINE_integer("seed", None, "Override: init / batch-order seed.")
flags.DEFINE_bool("resume", True, "Resume from out_dir's newest good checkpoint if any.")
flags.DEFINE_integer("mesh_data", None, "Data-parallel mesh axis (default: all devices / model).")
flags.DEFINE_integer("mesh_model", 1, "Model-parallel mesh axis.")
flags.DEFINE_integer("cpu_devices", 0, "If > 0: fake this many CPU devices (testing sharding).")
flags.DEFINE_integer("stop_at_step", None, "Stop (with a checkpoint) at this step, as if "
                     "interrupted; the schedule still spans the full run.")
flags.DEFINE_bool("progress", True, "Show a tqdm progress bar.")
flags.mark_flag_as_required("out_dir")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  import jax
  if FLAGS.cpu_devices > 0:
    jax.config.update("jax_num_cpu_devices", FLAGS.cpu_devices)
  from ttc_jax import sharding
  from ttc_jax.train import get_preset, train

  preset = get_preset(FLAGS.preset).with_train(
      steps=FLAGS.steps, train_tokens=FLAGS.train_tokens, batch_size=FLAGS.batch_size,
      lr=FLAGS.lr, grad_accum=FLAGS.grad_accum, eval_every=FLAGS.eval_every,
      ckpt_every=FLAGS.ckpt_every, log_every=FLAGS.log_every, seed=FLAGS.seed)
  mesh = sharding.make_mesh(data=FLAGS.mesh_data, model=FLAGS.mesh_model)
  result = train(preset, FLAGS.out_dir, mesh=mesh, resume=FLAGS.resume,
                 stop_at_step=FLAGS.stop_at_step, progress=FLAGS.progress,
                 log=lambda s: print(s, flush=True))
  summary = result.summary()
  print("summary: " + json.dumps(summary, sort_keys=True), flush=True)
  print(f"trained {FLAGS.preset} to step {result.step}/{result.total_steps} "
        f"(non-embedding params {summary['non_embedding_params']:,}); "
        f"train loss {result.train_loss}, eval loss {result.eval_loss}; "
        f"{result.tokens_per_s:,.0f} tok/s, MFU {result.mfu:.1%} of "
        f"{result.peak_gflops:.0f} GFLOP/s; checkpoint + tokenizer in {result.out_dir}",
        flush=True)
  return 0


if __name__ == "__main__":
  app.run(main)
