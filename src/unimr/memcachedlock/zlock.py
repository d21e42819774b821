"""Placeholder until the zlock issue lands: zlock behaves like rlock."""

from __future__ import annotations

from .decorators import rlock as zlock

__all__ = ["zlock"]
