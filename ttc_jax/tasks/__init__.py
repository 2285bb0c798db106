"""Task families and their registry ("arithmetic" is the built-in default)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ttc_jax.tasks.arithmetic import ArithmeticConfig, ArithmeticTask
from ttc_jax.tasks.base import Problem, Task, split_steps
from ttc_jax.tasks.benchmarks import Gsm8kTask, MathTask

DEFAULT_TASK = "arithmetic"

_REGISTRY: dict[str, Callable[..., Task]] = {}


def register_task(name: str, factory: Callable[..., Task]) -> None:
    """Registers a task family; factory(**options) builds an instance."""
    if name in _REGISTRY:
        raise ValueError(f"task {name!r} is already registered")
    _REGISTRY[name] = factory


def get_task(name: str = DEFAULT_TASK, **options: Any) -> Task:
    """Builds a registered task, e.g. get_task("arithmetic", reverse_digits=True)."""
    if name not in _REGISTRY:
        raise KeyError(f"unknown task {name!r}; registered: {sorted(_REGISTRY)}")
    return _REGISTRY[name](**options)


def task_names() -> list[str]:
    return sorted(_REGISTRY)


register_task("arithmetic", lambda **options: ArithmeticTask(ArithmeticConfig(**options)))
# Options: data_path=None, shots_path=None, num_shots=4, shots_seed=0 (ttc_jax.tasks.benchmarks).
register_task("math500", lambda **options: MathTask(**options))
register_task("gsm8k", lambda **options: Gsm8kTask(**options))

__all__ = [
    "DEFAULT_TASK",
    "ArithmeticConfig",
    "ArithmeticTask",
    "Gsm8kTask",
    "MathTask",
    "Problem",
    "Task",
    "get_task",
    "register_task",
    "split_steps",
    "task_names",
]
