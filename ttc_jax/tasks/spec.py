"""Which task a script runs on: `--dataset` and its options, one spec for every script.

"arithmetic" (the default) means the policy run's own built-in task, with the
options it was trained with; "math500" / "gsm8k" (or any registered reader)
are built from the spec's files. A policy run trained on a benchmark (e.g.
`train_policy --dataset=gsm8k`) records that task, and the spec refuses to
treat it as the built-in one.
"""

from __future__ import annotations

import dataclasses
import os
import warnings

from ttc_jax.tasks.base import Task

BUILT_IN = "arithmetic"


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """dataset: "arithmetic" or a registered reader name.
    data_path: the reader's test JSONL (default: ../shared/data/<dataset>/test.jsonl).
    shots_path: a JSONL in the same format (e.g. the train split): few-shot
      examples and the training problems; default: shots from data_path and
      no training problems.
    num_shots: worked examples per prompt. chat: prompt an instruct model
      through its tokenizer's chat template.
    """

    dataset: str = BUILT_IN
    data_path: str | None = None
    shots_path: str | None = None
    num_shots: int = 4
    chat: bool = False

    @property
    def built_in(self) -> bool:
        return self.dataset == BUILT_IN

    def check(self, *, hf_policy: bool = False) -> None:
        """Flag combinations that cannot work, before anything loads."""
        if hf_policy and self.built_in:
            raise ValueError("a Hugging Face policy (--policy_hf) needs a --dataset (math500, "
                             "gsm8k): the built-in task is read from a policy run directory")
        if self.num_shots < 0:
            raise ValueError(f"--num_shots must be >= 0, got {self.num_shots}")
        if self.chat and self.built_in:
            raise ValueError("--chat prompts an instruct model on --dataset=math500|gsm8k; the "
                             "built-in task's policies take its own prompt")
        if self.built_in and (self.data_path or self.shots_path):
            raise ValueError("--data_path / --shots_path go with --dataset=math500|gsm8k; the "
                             "built-in task generates its problems")

    def task_options(self) -> dict:
        """get_task's keyword options (none for the built-in task)."""
        if self.built_in:
            return {}
        return dict(data_path=self.data_path, shots_path=self.shots_path,
                    num_shots=self.num_shots, chat=self.chat)

    def record(self) -> dict:
        """What the results depend on (absolute paths), for run records and cache keys."""
        if self.built_in:
            return {"dataset": self.dataset}
        absolute = lambda p: p and os.path.abspath(p)
        out = {"dataset": self.dataset, "data_path": absolute(self.data_path),
               "shots_path": absolute(self.shots_path), "num_shots": self.num_shots}
        if self.chat:  # absent when off: records from before the flag still match
            out["chat"] = True
        return out

    @classmethod
    def from_record(cls, record: dict) -> "DatasetSpec":
        """The spec a `record()` (or a run_search run.json holding one) describes."""
        return cls(dataset=record.get("dataset", BUILT_IN), data_path=record.get("data_path"),
                   shots_path=record.get("shots_path"),
                   num_shots=record.get("num_shots", cls.num_shots),
                   chat=record.get("chat", False))

    def load(self, policy_dir: str | None = None) -> Task:
        """The task: the policy run's own for "arithmetic", else the named reader."""
        self.check(hf_policy=policy_dir is None)
        from ttc_jax.checkpoints import run_task_record
        from ttc_jax.tasks import get_task
        if policy_dir is None:  # a Hugging Face policy: `check` refused the built-in task
            return get_task(self.dataset, **self.task_options())
        name, options = run_task_record(policy_dir)
        if not self.built_in:
            self._warn_if_prompted_otherwise(name, options, policy_dir)
            return get_task(self.dataset, **self.task_options())
        if name != BUILT_IN:  # read from the record: the run's files may have moved
            raise ValueError(f"{policy_dir} was trained on {name!r}: pass "
                             f"--dataset={name} (with its --data_path / --shots_path)")
        return get_task(name, **options)

    def _warn_if_prompted_otherwise(self, name: str, options: dict, policy_dir: str) -> None:
        """A policy run trained on this benchmark saw its prompts: other shots or a
        chat template are prompts it never saw (allowed, but said)."""
        if name != self.dataset:
            return
        seen = (options.get("num_shots", DatasetSpec.num_shots), options.get("chat", False))
        if seen != (self.num_shots, self.chat):
            warnings.warn(f"{policy_dir} was trained on {self.dataset} prompts with "
                          f"num_shots={seen[0]}, chat={seen[1]}; these use "
                          f"num_shots={self.num_shots}, chat={self.chat} (--num_shots, --chat)",
                          stacklevel=3)
