"""Lock stores.  Each module holds one backend; ``make_backend`` picks from the settings."""

from __future__ import annotations

from ..config import Settings


def make_backend(settings: Settings):
    """Build the ILockBackend the settings ask for."""
    if settings.backend == "memcached":
        from .memcached import MemcachedBackend

        return MemcachedBackend.from_settings(settings)
    if settings.backend == "file":
        from .file import FileBackend

        return FileBackend.from_settings(settings)
    from .fallback import FallbackBackend

    return FallbackBackend.from_settings(settings)
