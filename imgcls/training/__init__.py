"""Training: data pipeline, augmentation, the shared loop, checkpoints and run folders.

Entry points: :func:`imgcls.training.run.train`, :func:`~imgcls.training.run.resume`
and :func:`~imgcls.training.run.finetune` (the ``train`` and ``finetune`` commands are
thin wrappers around them). They import torch when first used; importing this package
does not, so :mod:`imgcls.training.config` (which the model metadata validator reads)
stays torch-free.
"""

_EXPORTS = {"TrainConfig": "imgcls.training.config", "RunResult": "imgcls.training.run",
            "finetune": "imgcls.training.run", "resume": "imgcls.training.run", "train": "imgcls.training.run"}


def __getattr__(name: str):  # PEP 562: ``from imgcls.training import train`` still works
    if name in _EXPORTS:
        from importlib import import_module

        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'imgcls.training' has no attribute {name!r}")
