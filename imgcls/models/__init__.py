"""Model registry, architectures and the model file format.

Importing this package registers every architecture (it imports torch; torchvision
is imported only when a torchvision backbone is built).
"""

from imgcls.models import cnn, torchvision_models  # noqa: F401  (register the architectures)
from imgcls.models.registry import ArchSpec, get_model, get_spec, list_models, register_model  # noqa: F401
