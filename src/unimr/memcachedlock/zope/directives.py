"""The ``memcachedlock`` ZCML namespace: ``lock`` and ``immediateRetry``.

``<memcachedlock:lock class="..." method="..." key="..." kind="zlock"/>``
locks a method of a class (see :mod:`.patch`).  The action's discriminator
is ``('unimr.memcachedlock:lock', class, method)``: two registrations for
one method conflict (zope.configuration names both places), and including
the same file twice is harmless because ``include`` processes a file once.
Options are checked while the file is read, so a bad timeout is reported
with the file and line it came from.

``<memcachedlock:immediateRetry/>`` installs the publisher patch of
:mod:`.publisher` (discriminator ``('unimr.memcachedlock:immediateRetry',)``).
"""

from __future__ import annotations

from typing import Callable

from zope.configuration.fields import GlobalObject, PythonIdentifier
from zope.interface import Interface
from zope.schema import Choice, Float, TextLine

from ..decorators import check_options
from ..errors import MemcachedLockError
from ..locks import DEFAULT_INTERVAL, DEFAULT_TIMEOUT
from ..zlock import POLICIES
from . import patch, publisher


class ILockDirective(Interface):
    """Lock a method of a class with a distributed lock."""

    class_ = GlobalObject(
        title="Class",
        description="Dotted name of the class whose method is locked.",
        required=True,
    )
    method = PythonIdentifier(
        title="Method",
        description="Name of the method to lock.",
        required=True,
    )
    key = GlobalObject(
        title="Key function",
        description="Dotted name of get_key(fun, self, *args, **kw), returning what the lock protects.",
        required=True,
    )
    kind = Choice(
        title="Kind",
        description="zlock (held until the transaction ends, retries via LockBusy), lock or rlock.",
        values=patch.KINDS,
        default="zlock",
        required=False,
    )
    timeout = Float(
        title="Lease",
        description="Seconds the lock outlives a crashed holder (renewed while held).",
        default=DEFAULT_TIMEOUT,
        required=False,
    )
    interval = Float(
        title="Poll interval",
        description="Longest pause, in seconds, between two attempts while waiting.",
        default=DEFAULT_INTERVAL,
        required=False,
    )
    policy = Choice(
        title="zlock policy",
        description="always (lock each call until the transaction ends) or on-conflict (optimistic: "
        "lock at commit, and lock the whole retry after a ConflictError).",
        values=POLICIES,
        required=False,
    )
    name = TextLine(
        title="Lock name",
        description="Dotted name shared by methods that must exclude each other (default: the method's own).",
        required=False,
    )


class IImmediateRetryDirective(Interface):
    """Let Zope's publisher retry LockBusy without its random back-off."""


def lock(
    _context,
    class_: type,
    method: str,
    key: Callable,
    kind: str = "zlock",
    timeout: float = DEFAULT_TIMEOUT,
    interval: float = DEFAULT_INTERVAL,
    name: str | None = None,
    policy: str | None = None,
) -> None:
    """Handler of ``<memcachedlock:lock>``: check now, patch when the actions run."""
    from zope.configuration.exceptions import ConfigurationError

    try:
        check_options(timeout, interval, None, {})
        patch.check_lock_name(name)
        patch.decorator_for(kind)
        patch.check_policy(kind, policy)
    except MemcachedLockError as exc:
        raise ConfigurationError(str(exc)) from exc
    if not callable(key):
        raise ConfigurationError("key %r is not callable" % (key,))
    _context.action(
        discriminator=("unimr.memcachedlock:lock", class_, method),
        callable=patch.lock_method,
        args=(class_, method, key, kind, timeout, interval, name, policy),
    )


def immediate_retry(_context) -> None:
    """Handler of ``<memcachedlock:immediateRetry/>``."""
    _context.action(
        discriminator=("unimr.memcachedlock:immediateRetry",),
        callable=publisher.install,
        args=(),
    )
