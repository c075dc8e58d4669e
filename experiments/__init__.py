"""Experiments that turn the claims of the two papers (docs/math.md, MATH.md) into measurements.

Each module is ``python -m experiments.NAME [--quick]``; results go to
``experiments/results/NAME/`` and are shown, with the command, in ``docs/results.md``.

- ``decompression``  Hu et al. Fig. 1: R^c across attention-only layers, five updates, sweeps.
- ``layerwise``      per-layer R^c, sparsity and μ_SRR at initialisation and through training.
- ``generalization`` μ_SRR and baseline measures vs the generalization gap (Kendall τ, Ψ).
- ``regularization`` CE vs CE + η·μ_SRR, last layer and all layers, CRATE variants and a ViT.
- ``zoo``            accuracy, parameters and throughput of every registered variant.
- ``make_api_doc``   writes docs/api.md from the live docstrings.
"""
