"""The flags every experiment script shares: the task (--dataset and its files)
and the policy (a training run directory or a Hugging Face folder).

Scripts call `define(flag_values)` where they define their own flags (only
when run as a script, so modules import side by side), then `spec(f)` and
`policy(f)`.
"""

from __future__ import annotations

from ttc_jax.tasks.spec import BUILT_IN, DatasetSpec


def define(flag_values=None, *, policy_flag: str | None = "policy",
           policy_required: bool = True) -> None:
  """--dataset, --data_path, --shots_path, --num_shots, --chat; with
  policy_flag, also --<policy_flag> (a run directory) and --policy_hf."""
  from absl import flags
  on = {"flag_values": flag_values if flag_values is not None else flags.FLAGS}
  flags.DEFINE_string("dataset", BUILT_IN, "'arithmetic' (the policy run's built-in task) or "
                      "a registered reader: 'math500', 'gsm8k'.", **on)
  flags.DEFINE_string("data_path", None, "The --dataset's test JSONL (MATH-style or GSM8K); "
                      "default: ../shared/data/<dataset>/test.jsonl beside the project.", **on)
  flags.DEFINE_string("shots_path", None, "A JSONL in the same format (e.g. the train split): "
                      "few-shot examples and training problems. Default: shots from the data "
                      "file (never the evaluated item), no training problems.", **on)
  flags.DEFINE_integer("num_shots", 4, "Few-shot examples per prompt (math500, gsm8k).", **on)
  flags.DEFINE_bool("chat", False, "Instruct models: prompt through the tokenizer's chat "
                    "template (system = the instruction, shots as user / assistant turns).",
                    **on)
  if policy_flag is None:
    return
  flags.DEFINE_string(policy_flag, None, "Policy run directory (train_policy --out_dir).", **on)
  flags.DEFINE_string("policy_hf", None, "Or: a Hugging Face Llama / Qwen2 / Mistral folder "
                      "(config.json, *.safetensors, tokenizer.json or tokenizer.model); needs "
                      "--dataset.", **on)
  flags.mark_flags_as_mutual_exclusive([policy_flag, "policy_hf"], required=policy_required,
                                       **on)


def spec(f) -> DatasetSpec:
  """The DatasetSpec of parsed flags."""
  return DatasetSpec(dataset=f.dataset, data_path=f.data_path, shots_path=f.shots_path,
                     num_shots=f.num_shots, chat=f.chat)


def policy(f, policy_flag: str = "policy") -> tuple[str | None, bool]:
  """(path, is_hf) of the policy flags."""
  hf = getattr(f, "policy_hf")
  return (hf, True) if hf else (getattr(f, policy_flag), False)
