"""Moved to :mod:`pacnet.methods.regularizers` (DELTA's attention: :mod:`pacnet.methods.delta`);
kept so that imports written before the move work."""

from pacnet.methods.delta import channel_attention
from pacnet.methods.regularizers import (
    L2,
    FeatureDistance,
    FeatureTap,
    SpectralShrinkage,
    StartingPoint,
    channel_sq_distance,
    shrinkage,
)

__all__ = [
    "L2",
    "FeatureDistance",
    "FeatureTap",
    "SpectralShrinkage",
    "StartingPoint",
    "channel_attention",
    "channel_sq_distance",
    "shrinkage",
]
