"""Training: data pipeline, augmentation, the shared loop, checkpoints and run folders.

Entry points: :func:`imgcls.training.run.train`, :func:`~imgcls.training.run.resume`
and :func:`~imgcls.training.run.finetune` (the ``train`` and ``finetune`` commands are
thin wrappers around them). Importing this package imports torch.
"""

from imgcls.training.config import TrainConfig  # noqa: F401
from imgcls.training.run import RunResult, finetune, resume, train  # noqa: F401
