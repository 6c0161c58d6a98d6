"""``pacnet selftest``: does pacnet work on this machine's hardware?

On one device it runs four groups of cases and prints a line for each:

* **exact** — the device's optimizer kernels (Adam fused, foreach, for-loop and capturable;
  AdamW fused with weight decay and with amsgrad; SGD with momentum and weight decay, and
  Nesterov; RMSprop, NAdam, Adagrad) × fp32, bf16 autocast and fp16 with a GradScaler, on
  small models with BatchNorm, with a tied embedding, and with a GRU. Each case allocates
  and calibrates through :func:`pacnet.train_only` in a loop of its own and checks the
  frozen entries bit for bit after every step, the source view after Calibrate, and both
  tasks after a save and load. A case the device cannot run at all (no such kernel, or
  the plain model fails in that precision) is named as skipped, with why.
* **runs** — a short run of every benchmark with every method on the device. CelebA runs on
  a folder written here in CelebA's layout; Fashion-MNIST and the digits run where their
  data are installed and are otherwise named as skipped. ``--quick`` leaves these two out
  (:data:`~pacnet.experiments.selftest.runs.FULL_ONLY`): on a busy CPU they took minutes,
  the rest seconds.
* **engines** — every method the batched engine stacks, run on both engines (Friedman,
  tiny, 2 seeds, cross-validated): the metrics agree within the stated tolerance.
* **bench** — Allocate and Calibrate step time over a plain step (paired, median), for the
  record: no timing passes or fails.

Everything runs in a temporary folder, with a cache of its own. The second line of the
report is the plan and how long it took on 2 CPU cores
(:func:`~pacnet.experiments.selftest.main.plan`).

The groups live in ``exact`` (with the models and optimizers of ``models``) and ``runs``
(runs and engines); ``cases`` is a line of the report; ``main`` plans, runs every group
and says each line (:func:`~pacnet.experiments.selftest.main.selftest`).
"""
