"""Model registry, architectures and the model file format.

Importing this package costs no torch: the architectures register themselves at the first
look-up (:func:`get_spec`, :func:`get_model`, :func:`list_models`), and the architecture
table for help texts is torch-free (:mod:`imgcls.models.catalog`).
"""

from imgcls.models.registry import ArchSpec, get_model, get_spec, list_models, register_model  # noqa: F401
