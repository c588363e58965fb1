"""Configuration, training loop, checkpoints and the command line."""

from .checkpoints import CheckpointManager, load_checkpoint
from .config import ConfigError, EnvConfig, TrainConfig, config_from_dict, load_config
from .trainer import Trainer, TrainResult

__all__ = [
    "CheckpointManager",
    "ConfigError",
    "EnvConfig",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "config_from_dict",
    "load_checkpoint",
    "load_config",
]
