"""Lightning's per-batch hooks that a callback or the module leaves as the base class's no-op, taken out of the step."""

import pytorch_lightning as pl

TRAINING_HOOKS = ("on_train_batch_start", "on_train_batch_end", "on_before_backward", "on_after_backward", "on_before_optimizer_step", "on_before_zero_grad")
# A module's evaluation batch hooks stay: Lightning reads their signatures.
BATCH_HOOKS = (*TRAINING_HOOKS, "on_validation_batch_start", "on_validation_batch_end", "on_test_batch_start", "on_test_batch_end")


def skip_unused_batch_hooks(trainer: pl.Trainer) -> None:
    """Sets each per-batch hook that a callback of ``trainer`` inherits unchanged from ``pl.Callback``, and each training-batch
    hook its module inherits from ``pl.LightningModule``, to None on that object. Lightning calls a hook only where it is
    callable, and otherwise enters a profiler context and calls the no-op for every callback at every hook of every step."""
    objects = [(callback, pl.Callback, BATCH_HOOKS) for callback in trainer.callbacks]
    for instance, base, hooks in [*objects, (trainer.lightning_module, pl.LightningModule, TRAINING_HOOKS)]:
        for hook in hooks:
            if getattr(type(instance), hook, None) is getattr(base, hook):
                setattr(instance, hook, None)
