"""Under ``torchrun`` (gloo, CPU): each rank's loader draws its own augmentations, and repeated augmentation
sends the K copies of an image to different ranks of a real process group."""
from pathlib import Path

import pytest
import torch

from test_data_scale import write_jpegs

WORKER = Path(__file__).with_name("gloo_worker_data.py")


def torchrun(n: int, *args: str) -> None:
    from test_ddp_train import torchrun_script

    torchrun_script(WORKER, n, *args)


@pytest.mark.slow
def test_ranks_augment_the_copies_of_an_image_differently(tmp_path):
    write_jpegs(tmp_path / "data", splits=(("train", 3), ("val", 1)), size=(40, 30))  # 6 images
    torchrun(2, "stream", str(tmp_path / "data"), str(tmp_path / "shares.pt"))
    shares = sorted(torch.load(tmp_path / "shares.pt", weights_only=False), key=lambda s: s["rank"])
    first, second = shares
    assert len(first["indices"]) == len(second["indices"]) == 3  # ceil(6 / 2) each: an epoch keeps its length
    assert first["indices"] == second["indices"]  # K = 2 = world size: each image's two copies, one per rank
    assert first["images"].shape == (3, 3, 16, 16)
    for a, b in zip(first["images"], second["images"]):  # the same image, augmented differently on each rank
        assert not torch.equal(a, b)
