"""Run under ``torchrun`` by tests/test_data_scale_ddp.py (gloo, CPU).

``stream DATA_DIR OUT``: every rank reads its share of epoch 0 of the image folder at DATA_DIR through
``TrainBatches`` (one loader worker, repeated augmentation K = 2, RandomResizedCrop), with the rank and world
size of the process group; rank 0 writes every rank's images and sample indices to OUT (torch.save).
"""
import sys

import torch

from srr.data import Augmentation, load_dataset
from srr.train import distributed as D
from srr.train.data import TrainBatches


def run_stream(data_dir: str, out: str) -> None:
    env = D.setup("cpu")
    torch.set_num_threads(1)
    dataset = load_dataset("imagefolder", data_dir=data_dir, image_size=16, augment=True,
                           augmentation=Augmentation(crop="rrc"))
    batches = TrainBatches(dataset, batch_size=2, seed=7, rank=env.rank, world_size=env.world_size, num_workers=1,
                           repeats=2)
    images = torch.cat([x for x, _ in batches.epoch(0)])
    batches.sampler.set_epoch(0)
    indices = [index for index, _ in batches.sampler]
    shares = D.gather_objects(env, {"rank": env.rank, "images": images, "indices": indices})
    if env.is_main:
        torch.save(shares, out)
    D.teardown(env)


if __name__ == "__main__":
    {"stream": run_stream}[sys.argv[1]](*sys.argv[2:])
