"""Lightning's per-batch hooks that a callback or the module leaves as the base class's no-op, taken out of the step."""

import pytorch_lightning as pl

BATCH_HOOKS = (
    "on_train_batch_start",
    "on_train_batch_end",
    "on_before_backward",
    "on_after_backward",
    "on_before_optimizer_step",
    "on_before_zero_grad",
    "on_validation_batch_start",
    "on_validation_batch_end",
    "on_test_batch_start",
    "on_test_batch_end",
)


def skip_unused_batch_hooks(trainer: pl.Trainer) -> None:
    """Sets each per-batch hook that a callback of ``trainer``, or its module, inherits unchanged from ``pl.Callback`` or
    ``pl.LightningModule`` to None on that object. Lightning calls a hook only where it is callable, and otherwise enters a
    profiler context and calls the no-op for every callback at every hook of every step: most of its own cost at K = 1."""
    objects = [(callback, pl.Callback) for callback in trainer.callbacks] + [(trainer.lightning_module, pl.LightningModule)]
    for instance, base in objects:
        for hook in BATCH_HOOKS:
            if getattr(type(instance), hook, None) is getattr(base, hook):
                setattr(instance, hook, None)
