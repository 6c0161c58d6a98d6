"""pacnet inside other trainers: the Hugging Face ``Trainer``
(:mod:`pacnet.integrations.transformers`, ``pip install pacnet[hf]``) and ``lightning``'s
``Trainer`` (:mod:`pacnet.integrations.lightning`, ``pip install pacnet[lightning]``).

Both callbacks make the trainer's own training exact masked training with
:func:`pacnet.train_only`: its optimizer and scheduler, gradient accumulation, clipping and
mixed precision stay the trainer's. ``import pacnet`` imports neither library.
"""
