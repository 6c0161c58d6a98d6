"""The core: usable on any ``nn.Module``, knowing nothing of data sets or experiments.

``roles`` (what each tensor is), ``mask`` (Mask, prune), ``freeze`` (train_only), ``tasks``
(per-task tensors, task switching), ``pac`` (allocate, calibrate), ``checkpoint`` and ``io``
(safetensors files, no pickle).
"""
