"""Training: the data shapes pacnet takes (``batches``), the one loop every method uses
(``train``: fit, evaluate), data-parallel runs under torchrun (``distributed``) and the
content-addressed cache of states and generated data (``cache``)."""
