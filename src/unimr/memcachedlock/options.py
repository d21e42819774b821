"""What a caller asks of a lock: one frozen, checked record shared by every way in.

The decorators (``lock``, ``rlock``, ``zlock``), ``lock_for_transaction`` and
the ``<memcachedlock:lock>`` directive all build a :class:`LockOptions`, so
one value is accepted or refused in the same words wherever it is given, and
at the moment it is given (decoration, ZCML load), not at the first call.
"""

from __future__ import annotations

import dataclasses
import math
import warnings

from .errors import ConfigurationError, InvalidArgument

#: memcached reads a larger exptime as an absolute unix time.
MAX_LEASE = 2592000.0
#: The longest pause between two polls while waiting.
MAX_INTERVAL = 3600.0

DEFAULT_TIMEOUT = 30.0
DEFAULT_INTERVAL = 0.05
#: Extra wait beyond the lease: memcached's one-second clock plus a poll.
WAIT_MARGIN = 2.0

#: zlock's policies; ``adaptive`` switches per key between the other two.
POLICIES = ("adaptive", "always", "on-conflict")
DEFAULT_POLICY = "adaptive"
#: ConflictErrors in a row after which policy ``on-conflict`` locks the whole retry.
DEFAULT_CONFLICTS = 1


def check_seconds(what: str, value: object, high: float) -> float:
    """``value`` as a float in (0, high]; InvalidArgument naming ``what`` and the value otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidArgument("%s must be a number of seconds, not %r" % (what, value))
    number = float(value)
    if math.isnan(number) or not 0 < number <= high:
        raise InvalidArgument("%s must be above 0 and at most %g seconds, not %r" % (what, high, value))
    return number


def check_policy(policy: str, conflicts: int = DEFAULT_CONFLICTS, move_view: bool = True) -> str:
    """``policy`` if it is one of POLICIES and the options suit it, else a ConfigurationError naming the bad one."""
    if not isinstance(move_view, bool):
        raise ConfigurationError("bad zlock move_view %r: use True or False" % (move_view,))
    if policy not in POLICIES:
        raise ConfigurationError("unknown zlock policy %r: use one of %s" % (policy, ", ".join(POLICIES)))
    if isinstance(conflicts, bool) or not isinstance(conflicts, int) or not 1 <= conflicts <= 100:
        raise ConfigurationError("bad zlock conflicts %r: use a whole number from 1 to 100" % (conflicts,))
    if policy != "on-conflict" and conflicts != DEFAULT_CONFLICTS:
        raise ConfigurationError("zlock conflicts=%r applies to policy on-conflict only, not %s" % (conflicts, policy))
    return policy


def old_interval(interval: float, kw: dict[str, float], stacklevel: int = 3) -> float:
    """Accept the 2009 spelling ``intervall`` (taken out of ``kw``) with a DeprecationWarning.

    ``stacklevel`` counts from this function to the caller's code the warning should name.
    """
    if "intervall" in kw:
        warnings.warn("'intervall' is deprecated: spell it 'interval'", DeprecationWarning, stacklevel=stacklevel)
        old = kw.pop("intervall")
        if interval != DEFAULT_INTERVAL and interval != old:
            raise InvalidArgument("give 'interval' or 'intervall', not both (%r, %r)" % (interval, old))
        return old
    return interval


@dataclasses.dataclass(frozen=True)
class LockOptions:
    """The lease, the poll interval and the longest wait of a lock; for zlock also its policy.

    ``wait`` None becomes the lease plus :data:`WAIT_MARGIN`: long enough for
    a crashed holder's lease to run out.  ``policy``, ``conflicts`` and
    ``move_view`` matter to zlock only (see ``unimr.memcachedlock.zlock``);
    their defaults suit ``lock`` and ``rlock``, which ignore them.
    """

    timeout: float = DEFAULT_TIMEOUT
    interval: float = DEFAULT_INTERVAL
    wait: float = DEFAULT_TIMEOUT + WAIT_MARGIN
    policy: str = DEFAULT_POLICY
    conflicts: int = DEFAULT_CONFLICTS
    move_view: bool = True

    def __init__(self, timeout: float = DEFAULT_TIMEOUT, interval: float = DEFAULT_INTERVAL,
                 wait: float | None = None, policy: str = DEFAULT_POLICY, conflicts: int = DEFAULT_CONFLICTS,
                 move_view: bool = True) -> None:
        """Check every value; InvalidArgument or ConfigurationError names the bad one."""
        timeout = check_seconds("lock timeout (lease)", timeout, MAX_LEASE)
        interval = check_seconds("lock interval", interval, MAX_INTERVAL)
        wait = timeout + WAIT_MARGIN if wait is None else check_seconds("lock wait", wait, MAX_LEASE)
        check_policy(policy, conflicts, move_view)
        for name, value in (("timeout", timeout), ("interval", interval), ("wait", wait), ("policy", policy),
                            ("conflicts", conflicts), ("move_view", move_view)):
            object.__setattr__(self, name, value)

    @classmethod
    def from_keywords(cls, timeout: float = DEFAULT_TIMEOUT, interval: float = DEFAULT_INTERVAL,
                      wait: float | None = None, kw: dict[str, float] | None = None, policy: str = DEFAULT_POLICY,
                      conflicts: int = DEFAULT_CONFLICTS, move_view: bool = True) -> LockOptions:
        """The options of a decorator: ``kw`` holds what else was passed to it (``intervall``, or a mistake)."""
        rest = dict(kw or {})
        interval = old_interval(interval, rest, stacklevel=4)
        if rest:
            raise TypeError("unexpected keyword argument(s): %s" % ", ".join(sorted(rest)))
        return cls(timeout, interval, wait, policy, conflicts, move_view)


__all__ = ["LockOptions", "POLICIES", "DEFAULT_POLICY", "DEFAULT_CONFLICTS", "DEFAULT_TIMEOUT", "DEFAULT_INTERVAL",
           "MAX_LEASE", "MAX_INTERVAL", "WAIT_MARGIN", "check_seconds", "check_policy"]
