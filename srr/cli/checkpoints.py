"""What ``srr eval`` and ``srr measure`` share: a checkpoint (or run folder) → model + its data."""
from __future__ import annotations

from pathlib import Path

SPLITS = ("train", "val", "test")


def resolve_checkpoint(path: Path) -> Path:
    """A checkpoint file as given, or a run folder's ``checkpoints/latest.pt``."""
    if path.is_dir():
        latest = path / "checkpoints" / "latest.pt"
        if not latest.is_file():
            raise FileNotFoundError(f"{path} is a folder but not a run folder with a checkpoint: "
                                    f"no {latest}; pass a .pt file or the --out of an srr train run")
        return latest
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    return path


def load_model(path: Path, device):
    """``(model in eval mode on device, the TrainConfig dict it was trained with or None)``."""
    from srr.models import create_model, read_checkpoint

    path = resolve_checkpoint(path)
    obj = read_checkpoint(path)
    model = create_model(checkpoint=path).to(device).eval()
    extra = obj.get("extra") if isinstance(obj.get("extra"), dict) else {}
    return model, extra.get("train_config")


def load_any(checkpoint: Path | None, *, model_name: str | None, pretrained: str | None, device):
    """``(path, model, train config or None)`` from an srr run/checkpoint (``checkpoint``) or from weights
    that are not an srr run (``--model NAME --pretrained PATH``: public CRATE, safetensors, a folder)."""
    from srr.models import create_model

    if pretrained is None:
        path = resolve_checkpoint(checkpoint)
        return (path, *load_model(path, device))
    from srr.models.pretrained import parse_hub_spec

    model = create_model(model_name, pretrained=pretrained).to(device).eval()
    hub = parse_hub_spec(pretrained)
    # a hub repo's outputs go to the working folder, named after it (owner--repo-measure, ...)
    return Path(hub[0].replace("/", "--")) if hub else Path(pretrained), model, None


def check_weights(value: str | None, option: str) -> str | None:
    """``--pretrained`` / ``--init-from``: a hub source (``hf://owner/repo``, checked) or a path that exists;
    a ValueError (exit code 2) otherwise."""
    from srr.models.pretrained import parse_hub_spec

    if value is None:
        return None
    try:
        hub = parse_hub_spec(value)
    except ValueError as error:
        raise ValueError(f"{option}: {error}") from None
    if hub is None and not Path(value).exists():
        raise ValueError(f"{option} {value} does not exist; pass a save_pretrained folder, a run folder, a "
                         f"checkpoint, a .safetensors or .pth file, or hf://owner/repo")
    return value


def check_data_options(*, split: str, dataset: str | None, data_dir: Path | None, download: bool, device: str):
    """The data and device options of eval / measure / attention, before anything is loaded (ValueErrors,
    exit code 2); returns the resolved device."""
    from srr.data import list_datasets
    from srr.train.distributed import resolve_device

    if split not in SPLITS:
        raise ValueError(f"--split must be one of {', '.join(SPLITS)}, got {split!r}")
    if dataset is not None and dataset not in list_datasets():
        raise ValueError(f"unknown dataset {dataset!r}; valid datasets: {', '.join(list_datasets())}")
    check_data_dir(data_dir, download=download)
    return resolve_device(device)


def check_data_dir(data_dir: Path | None, *, download: bool) -> None:
    """A ``--data-dir`` given must exist, unless ``--download`` is to fill it."""
    if data_dir is not None and not download and not Path(data_dir).is_dir():
        raise ValueError(f"--data-dir {data_dir} is not a folder; pass the folder holding the dataset "
                         f"(or --download to fetch it there)")


def check_out_folder(folder: Path | None, option: str = "--out") -> None:
    """An output folder given must be a folder or not exist yet (it is created)."""
    blocking = next((p for p in (folder, *folder.parents) if p.exists()), None) if folder is not None else None
    if blocking is not None and not blocking.is_dir():
        raise ValueError(f"{option} {folder} cannot be a folder: {blocking} is a file; pass a folder path")


def check_source(checkpoint: Path | None, *, model_name: str | None, pretrained: str | None) -> None:
    """The usage rules of CHECKPOINT / ``--model`` / ``--pretrained`` (a ValueError, exit code 2)."""
    from srr.models import list_models

    if (checkpoint is None) == (pretrained is None):
        raise ValueError("pass either CHECKPOINT (an srr run or checkpoint) or --pretrained PATH (with --model NAME "
                         "for a public CRATE checkpoint), not both and not neither")
    if pretrained is None and model_name is not None:
        raise ValueError("--model goes with --pretrained; an srr CHECKPOINT knows its own model")
    if model_name is not None and model_name not in list_models():
        raise ValueError(f"unknown model {model_name!r}; valid models: {', '.join(list_models())}")
    if checkpoint is not None and not checkpoint.exists():
        raise ValueError(f"checkpoint {checkpoint} does not exist; pass an srr checkpoint (.pt) or a run folder")
    check_weights(pretrained, "--pretrained")


def check_fits(model, train_config: dict | None, name: str, *, data_dir) -> None:
    """Images of ``name`` must have the channels the model was trained on (the size is resized to the
    model's); otherwise a ValueError in the words of the two datasets: "trained on digits (1×8×8), the
    data is cifar10 (3×32×32)"."""
    from srr.data import dataset_info

    c = model.config
    info = dataset_info(name, data_dir=data_dir)
    if info.in_chans != c.in_chans:
        trained = (train_config or {}).get("dataset") or "its data"
        raise ValueError(f"the model was trained on {trained} ({c.in_chans}×{c.image_size}×{c.image_size}), the "
                         f"data is {name} ({info.in_chans}×{info.image_size}×{info.image_size}): pass --dataset with "
                         f"{c.in_chans}-channel images")


def load_split(model, train_config: dict | None, *, split: str, dataset: str | None, data_dir, download: bool):
    """The ``split`` (train, val, test) of the dataset ``model`` was trained on (or ``dataset``),
    un-augmented, at the model's image size. For an srr run, ``train`` is the images it trained on (its
    training split less what it held out for val, and only its ``train_subset``)."""
    from srr.data import load_dataset
    from srr.train import TrainConfig
    from srr.train.data import load_run_data

    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be one of train, val, test, got {split!r}")
    name = dataset or (train_config or {}).get("dataset")
    if name is None:
        raise ValueError("the checkpoint does not say which dataset it was trained on; pass --dataset")
    data_dir = str(data_dir) if data_dir is not None else (train_config or {}).get("data_dir")
    image_size = model.config.image_size
    check_fits(model, train_config, name, data_dir=data_dir)
    if split == "val" and train_config is None:
        raise ValueError("split 'val' is carved out of the training split by srr train; this checkpoint "
                         "has no training config, so use --split train or --split test")
    own_data = train_config is not None and name == train_config.get("dataset")
    if split == "val" or (split == "train" and own_data):  # the run's own split: what it held out, or trained on
        config = TrainConfig.from_dict(train_config).replace(
            dataset=name, data_dir=data_dir, download=download, image_size=image_size, augment=False,
            measure_samples=0)
        run_data = load_run_data(config)
        if split == "train":
            return run_data.train  # the images it trained on (val_fraction held out, train_subset applied)
        val = run_data.val
        if val is None:
            raise ValueError("the run had no validation split (val_fraction=0); use --split test")
        return val
    seed = (train_config or {}).get("seed", 0)
    return load_dataset(name, split=split, data_dir=data_dir, download=download, augment=False,
                        image_size=image_size, seed=seed)
