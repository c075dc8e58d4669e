"""Training: ``train(TrainConfig(...)) -> RunResult``, the library behind ``srr train``.

Cross-entropy plus the SRR regulariser of HU24 §6 (MATH.md §6), a run folder that loses nothing
(config, metrics.jsonl, plots, atomic latest/best checkpoints), exact ``resume``, a NaN guard,
and DistributedDataParallel under ``torchrun``; Lion, an EMA of the weights, gradient accumulation and
named paper recipes (docs/guide-scale.md).
"""
from .callbacks import Callback, CSVLogger, JSONLLogger, SRRMeasurement, TensorBoardLogger, default_callbacks
from .config import OPTIMIZERS, TrainConfig, parse_layers
from .errors import NonFiniteLossError, TrainingInterrupted
from .ema import ModelEMA
from .evaluate import evaluate
from .lion import Lion
from .loop import RunResult, train
from .recipes import RECIPES, list_recipes, recipe_config
from .run_dir import RunDir
from .schedule import WarmupCosine, warmup_cosine

__all__ = [
    "Callback", "CSVLogger", "JSONLLogger", "SRRMeasurement", "TensorBoardLogger", "default_callbacks",
    "OPTIMIZERS",
    "Lion",
    "ModelEMA",
    "RECIPES",
    "list_recipes",
    "recipe_config",
    "NonFiniteLossError",
    "RunDir",
    "RunResult",
    "TrainConfig",
    "TrainingInterrupted",
    "WarmupCosine",
    "evaluate",
    "parse_layers",
    "train",
    "warmup_cosine",
]
