"""Training: ``train(TrainConfig(...)) -> RunResult``, the library behind ``srr train``.

Cross-entropy plus the SRR regulariser of HU24 §6 (MATH.md §6), a run folder that loses nothing
(config, metrics.jsonl, plots, atomic latest/best checkpoints), exact ``resume``, a NaN guard,
and DistributedDataParallel under ``torchrun``.
"""
from .callbacks import Callback, CSVLogger, JSONLLogger, SRRMeasurement, TensorBoardLogger, default_callbacks
from .config import OPTIMIZERS, TrainConfig, parse_layers
from .errors import NonFiniteLossError, TrainingInterrupted
from .evaluate import evaluate
from .loop import RunResult, train
from .run_dir import RunDir
from .schedule import WarmupCosine, warmup_cosine

__all__ = [
    "Callback", "CSVLogger", "JSONLLogger", "SRRMeasurement", "TensorBoardLogger", "default_callbacks",
    "OPTIMIZERS",
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
