"""Model registry, architectures and the model file format.

Importing this package costs nothing: the architectures (and with them torch) are
imported when the registry is first asked for one (:data:`ARCH_MODULES`, loaded by
:func:`imgcls.models.registry.get_spec` and friends), so :mod:`imgcls.models.io` can read
a model file's metadata, and predict can run an ONNX model, without torch. torchvision is
imported only when a torchvision backbone is built, timm only for ``timm/<name>``; the
architecture table for help texts is torch-free (:mod:`imgcls.models.catalog`).
"""

# The modules whose import registers architectures (register_model), in listing order.
ARCH_MODULES = ("imgcls.models.cnn", "imgcls.models.torchvision_models", "imgcls.models.timm_models")

_REGISTRY_API = ("ArchSpec", "get_model", "get_spec", "list_models", "register_model")


def __getattr__(name: str):  # PEP 562: ``from imgcls.models import get_model`` still works
    if name in _REGISTRY_API:
        from imgcls.models import registry

        return getattr(registry, name)
    raise AttributeError(f"module 'imgcls.models' has no attribute {name!r}")
