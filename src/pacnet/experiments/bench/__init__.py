"""``pacnet bench``: ``costs`` (what PAC-Net's bookkeeping costs: step time, memory, bytes),
``modes`` (the training modes side by side), ``models`` (the models timed) and ``engines``
(the batched engine against the sequential one)."""
