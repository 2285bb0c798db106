"""AdamW with linear warmup + cosine decay (optax)."""

from __future__ import annotations

import dataclasses

import jax
import optax


@dataclasses.dataclass(frozen=True)
class OptimConfig:
  """lr: peak learning rate, reached after `warmup_steps` linear steps from 0,
  then cosine-decayed to lr * min_lr_ratio at `total_steps`.
  weight_decay applies to matrices only (rank >= 2), not to norm weights
  or biases. clip_norm: global gradient-norm clip (None: off)."""

  lr: float
  total_steps: int
  warmup_steps: int = 0
  min_lr_ratio: float = 0.1
  b1: float = 0.9
  b2: float = 0.95
  eps: float = 1e-8
  weight_decay: float = 0.1
  clip_norm: float | None = 1.0

  def __post_init__(self):
    if self.total_steps < 1:
      raise ValueError(f"total_steps must be >= 1, got {self.total_steps}")
    if not 0 <= self.warmup_steps <= self.total_steps:
      raise ValueError(f"need 0 <= warmup_steps <= total_steps, got {self.warmup_steps}, "
                       f"{self.total_steps}")


def make_schedule(cfg: OptimConfig) -> optax.Schedule:
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=cfg.lr, warmup_steps=cfg.warmup_steps,
      decay_steps=cfg.total_steps, end_value=cfg.lr * cfg.min_lr_ratio)


def decay_mask(params):
  return jax.tree_util.tree_map(lambda p: p.ndim >= 2, params)


def make_optimizer(cfg: OptimConfig) -> optax.GradientTransformation:
  parts = []
  if cfg.clip_norm is not None:
    parts.append(optax.clip_by_global_norm(cfg.clip_norm))
  parts.append(optax.adamw(make_schedule(cfg), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                           weight_decay=cfg.weight_decay, mask=decay_mask))
  return optax.chain(*parts)
