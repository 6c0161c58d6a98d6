"""The core: usable on any ``nn.Module``, knowing nothing of data sets or experiments.

``roles`` (what each tensor is), ``entries`` (stateless helpers on tensor entries), ``mask``
(Mask, prune), ``freeze`` (train_only and the ways it holds frozen entries exactly),
``tasks`` (per-task tensors, task switching), ``pac`` (allocate, calibrate) and
``checkpoint`` (safetensors files, no pickle).
"""
