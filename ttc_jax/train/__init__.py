"""Training: data pipelines, optimiser, presets and the policy training loop."""

from ttc_jax.train.data import BatchPlan, DataConfig, Rows, build_rows, tokenize_problems
from ttc_jax.train.loop import TrainResult, loss_sums, make_train_step, train
from ttc_jax.train.optim import OptimConfig, make_optimizer, make_schedule
from ttc_jax.train.presets import PRESETS, Preset, TrainConfig, get_preset, preset_names

__all__ = [
    "PRESETS", "BatchPlan", "DataConfig", "OptimConfig", "Preset", "Rows", "TrainConfig",
    "TrainResult", "build_rows", "get_preset", "loss_sums", "make_optimizer", "make_schedule",
    "make_train_step", "preset_names", "tokenize_problems", "train",
]
