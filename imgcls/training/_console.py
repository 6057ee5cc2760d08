"""imgcls.console's info/detail/warn for the training modules (the console escapes markup and control characters itself)."""

from __future__ import annotations

from imgcls.console import detail, info, warn  # noqa: F401
