#!/bin/bash
cd /work/main
export OMP_NUM_THREADS=1
/usr/bin/time -p python -m srr train --recipe yu23-imagenet --model crate_micro --patch-size 4 \
    --dataset imagefolder --data-dir /work/shared/data/cifar10 --image-size 32 --train-crop rrc \
    --batch-size 64 --global-batch 128 --lr 1e-3 --weight-decay 0.5 --warmup 1 --epochs 3 --ema-decay 0.999 \
    --train-subset 8000 --val-fraction 0.02 --workers 1 --threads 1 --out /tmp/yu23rrc/run
