"""Trains a policy LM on the built-in task or a benchmark's training problems, from a
named preset.

  python -m experiments.train_policy --preset=smoke --out_dir=runs/smoke
  python -m experiments.train_policy --preset=small --out_dir=runs/small
  python -m experiments.train_policy --preset=large --out_dir=runs/large
  python -m experiments.train_policy --preset=small_verifier --out_dir=runs/small_verifier
  python -m experiments.train_policy --preset=small --out_dir=runs/gsm8k_small \
      --dataset=gsm8k --data_path=gsm8k/test.jsonl --shots_path=gsm8k/train.jsonl \
      --num_shots=0 --row_len=384

--dataset=math500|gsm8k trains on the reference solutions of --shots_path (a
train-split JSONL; questions also in --data_path, the test file, are left
out) with the task's prompts (--num_shots worked examples drawn from the same
file). The preset's model and schedule stay; the data defaults change: all
training problems but a held-out tenth (at most the preset's eval count) for
the eval loss, a tokenizer of up to --tokenizer_vocab_size pieces (default
1024: benchmark text needs word pieces, where the built-in task's 48 are
single characters), the preset's row_len (longer rows are dropped and
counted; --row_len raises it, the buckets scale with it). The run records the
task and its files (absolute paths), so `load_run_task(out_dir)` rebuilds it
and the other scripts take the same --dataset flags with it.

out_dir receives orbax checkpoints (checkpoints/<step>/), the tokenizer
(tokenizer.model), a JSON sidecar (policy.json) and metrics.jsonl. Restarting
the same command resumes from the newest good checkpoint (--resume, default
on) and ends bit-identical to an uninterrupted run.
"""

from __future__ import annotations

import json

from absl import app, flags, logging

from experiments import dataset_flags
from ttc_jax import distributed
from ttc_jax.train.presets import DATASET_VOCAB_SIZE

FLAGS = flags.FLAGS
flags.DEFINE_string("preset", "smoke", "Preset name (ttc_jax.train.presets): smoke, small, "
                    "small_verifier, large.")
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
flags.DEFINE_integer("num_train_problems", None, "Override: training problems (with "
                     "--dataset default: all of --shots_path but the eval ones).")
flags.DEFINE_integer("num_eval_problems", None, "Override: held-out training-stream problems "
                     "for the eval loss (with --dataset default: a tenth, at most the "
                     "preset's).")
flags.DEFINE_integer("tokenizer_vocab_size", None, "Override: the tokenizer's most pieces "
                     f"(preset: 48; with --dataset default {DATASET_VOCAB_SIZE}).")
flags.DEFINE_integer("row_len", None, "Override: the longest training row in tokens (longer "
                     "ones are dropped and counted); the buckets scale with it.")
flags.DEFINE_list("buckets", None, "Override: padded row lengths (ascending, the last = "
                  "row_len).")
flags.DEFINE_bool("resume", True, "Resume from out_dir's newest good checkpoint if any.")
flags.DEFINE_integer("mesh_data", None, "Data-parallel mesh axis (default: all devices / model).")
flags.DEFINE_integer("mesh_model", 1, "Model-parallel mesh axis.")
flags.DEFINE_integer(
    "cpu_devices", -1, "Fake this many XLA:CPU devices (a CPU backend only; GPU/TPU runs "
    "ignore it). -1 (default): mesh_data x mesh_model / num_processes when --mesh_data "
    "is given, else 2 per process, "
    "unless JAX_NUM_CPU_DEVICES or XLA_FLAGS already set a count. 0: leave JAX's default "
    "(one device). XLA:CPU runs some ops of a step single-threaded, so two devices on the "
    "data axis train faster on 2 cores: measured 19.0k -> 27.5k tok/s (small preset) and "
    "4.4k -> 5.0k tok/s (large) at batch 64; ~30k / ~5.7k tok/s at the presets' batch 32.")
flags.DEFINE_integer("stop_at_step", None, "Stop (with a checkpoint) at this step, as if "
                     "interrupted; the schedule still spans the full run.")
flags.DEFINE_bool("progress", True, "Show a tqdm progress bar.")
flags.mark_flag_as_required("out_dir")
distributed.define_flags(local_device_count=False)  # --cpu_devices plays that part here
dataset_flags.define(FLAGS, policy_flag=None)


def _cpu_device_count() -> int:
  """How many fake CPU devices to ask for (0: leave JAX's setting alone)."""
  if FLAGS.cpu_devices >= 0:
    return FLAGS.cpu_devices
  if distributed.cpu_devices_set_by_env():
    return 0
  if FLAGS.mesh_data is not None:  # the mesh is global: each process holds its share
    return max(1, FLAGS.mesh_data * FLAGS.mesh_model // max(1, FLAGS.num_processes))
  return distributed.AUTO_CPU_DEVICES


def make_preset():
  """The preset named by the flags, with their training and data overrides."""
  from ttc_jax.train import get_preset
  preset = get_preset(FLAGS.preset).with_train(
      steps=FLAGS.steps, train_tokens=FLAGS.train_tokens, batch_size=FLAGS.batch_size,
      lr=FLAGS.lr, grad_accum=FLAGS.grad_accum, eval_every=FLAGS.eval_every,
      ckpt_every=FLAGS.ckpt_every, log_every=FLAGS.log_every, seed=FLAGS.seed)
  sizes = dict(num_train_problems=FLAGS.num_train_problems,
               num_eval_problems=FLAGS.num_eval_problems,
               tokenizer_vocab_size=FLAGS.tokenizer_vocab_size)
  spec = dataset_flags.spec(FLAGS)
  spec.check()
  if not spec.built_in:
    preset = preset.on_dataset(spec, **sizes)
  buckets = tuple(int(b) for b in FLAGS.buckets) if FLAGS.buckets else None
  return preset.with_data(n_train_problems=sizes["num_train_problems"],
                          n_eval_problems=sizes["num_eval_problems"],
                          tokenizer_vocab_size=sizes["tokenizer_vocab_size"],
                          row_len=FLAGS.row_len, buckets=buckets)


def main(argv):
  del argv
  try:
    preset = make_preset()  # bad flags or data fail before any device work
  except (ValueError, FileNotFoundError) as e:
    raise app.UsageError(str(e)) from None
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  n_cpu = _cpu_device_count()
  distributed.maybe_initialize(FLAGS.coordinator_address, FLAGS.num_processes,
                               FLAGS.process_id, n_cpu if n_cpu > 0 else None)
  from ttc_jax import sharding
  from ttc_jax.train import train

  mesh = sharding.make_mesh(data=FLAGS.mesh_data, model=FLAGS.mesh_model)
  result = train(preset, FLAGS.out_dir, mesh=mesh, resume=FLAGS.resume,
                 stop_at_step=FLAGS.stop_at_step, progress=FLAGS.progress,
                 log=lambda s: print(s, flush=True))
  summary = result.summary()
  n_dev = mesh.devices.size  # MFU is against n_dev x the one-device matmul peak
  print("summary: " + json.dumps(summary, sort_keys=True), flush=True)
  print(f"trained {FLAGS.preset} ({preset.data.task}) to step {result.step}/{result.total_steps} "
        f"(non-embedding params {summary['non_embedding_params']:,}); "
        f"train loss {result.train_loss}, eval loss {result.eval_loss}; "
        f"{result.tokens_per_s:,.0f} tok/s, MFU {result.mfu:.1%} of {n_dev} x "
        f"{result.peak_gflops:.0f} GFLOP/s; checkpoint + tokenizer in {result.out_dir}",
        flush=True)
  return 0


if __name__ == "__main__":
  app.run(main)
