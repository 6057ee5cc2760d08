"""Model registry, architectures and the model file format.

Importing this package registers every architecture (it imports torch).
"""

from imgcls.models.registry import ArchSpec, get_model, get_spec, list_models, register_model  # noqa: F401
from imgcls.models import cnn  # noqa: F401,E402  (registers cnn, cnn-gru, ...)

try:  # torchvision backbones register themselves when their module exists
    from imgcls.models import torchvision_models  # noqa: F401
except ImportError as _exc:  # pragma: no cover - only while the module is being written
    if "torchvision_models" not in str(_exc):
        raise
