"""The zlock policies by name: each call's policy is chosen here once, from ``policy=``."""

from __future__ import annotations

from .policy import Policy
from .policy_adaptive import ADAPTIVE
from .policy_always import ALWAYS
from .policy_onconflict import ON_CONFLICT

_BY_NAME: dict[str, Policy] = {policy.name: policy for policy in (ALWAYS, ON_CONFLICT, ADAPTIVE)}


def policy_named(name: str) -> Policy:
    """The policy called ``name`` (one of ``options.POLICIES``, which ``LockOptions`` checked)."""
    return _BY_NAME[name]


__all__ = ["policy_named"]
