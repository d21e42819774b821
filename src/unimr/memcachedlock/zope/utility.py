"""The lock store as a Zope utility (registered by ``configure.zcml``)."""

from __future__ import annotations

from .. import config


def lock_backend():
    """The process's ILockBackend, built from ``MEMCACHEDLOCK_*`` (no connection is opened yet)."""
    return config.get_backend()
