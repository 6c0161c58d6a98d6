"""Moved to :mod:`pacnet.benchmarks.resnet`; kept so that imports written before the move work."""

from pacnet.benchmarks.resnet import BasicBlock, ResNet18, resnet18

__all__ = ["BasicBlock", "ResNet18", "resnet18"]
