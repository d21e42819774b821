"""The ``memcachedlock`` ZCML namespace: ``store``, ``lock`` and ``immediateRetry``.

``<memcachedlock:store backend="fallback" servers="..." dir="..."/>``
registers the process's lock store as the ILockBackend utility: its action
is the one ``<utility provides="...ILockBackend"/>`` makes (discriminator
``('utility', ILockBackend, '')``), so two stores -- or a store and a
``<utility>`` -- conflict, and ``overrides.zcml`` replaces either.  The locks
use that utility (:func:`..registry.get_backend`); attributes left out, or
empty, come from the ``MEMCACHEDLOCK_*`` environment, then the defaults.

``<memcachedlock:lock class="..." method="..." key="..." kind="zlock"/>``
locks a method of a class (see :mod:`.patch`); ``methods="a b c"`` instead
of ``method`` locks several methods of the class alike.  Each method is one
action, with the discriminator ``('unimr.memcachedlock:lock', class,
method)``, whichever attribute named it: two registrations for one method
conflict (zope.configuration names both places), an ``overrides.zcml`` can
replace the lock of one method of a list, and including the same file twice
is harmless because ``include`` processes a file once.  Its options are the
decorator's keywords (:class:`ILockOptions`): a field added there is passed
to the decorator, whose :class:`..options.LockOptions` checks it -- the
fields here only turn text into numbers, so a limit is written once.
Everything is checked while the file is read, so a bad value is reported
with the file and line it came from.

``<memcachedlock:immediateRetry/>`` installs the publisher patch of
:mod:`.publisher` (discriminator ``('unimr.memcachedlock:immediateRetry',)``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Protocol

from zope.configuration.exceptions import ConfigurationError
from zope.configuration.fields import GlobalObject, PythonIdentifier, Tokens
from zope.interface import Interface
from zope.schema import Bool, Choice, Float, Int, Text, TextLine

from .. import config
from ..decorators import GetKey
from ..errors import MemcachedLockError
from ..interfaces import ILockBackend
from ..options import DEFAULT_INTERVAL, DEFAULT_TIMEOUT, POLICIES
from ..registry import make_backend
from . import patch, publisher


class Context(Protocol):
    """What a directive handler uses of its zope.configuration context: registering an action."""

    def action(self, discriminator: object, callable: Callable[..., object] | None = None,
               args: tuple[object, ...] = (), kw: dict[str, object] | None = None) -> None:
        """Run ``callable(*args, **kw)`` when the actions are executed; ``discriminator`` detects conflicts."""


def _field(field: type, title: str, description: str, required: bool = False, **kw: Any) -> Any:
    """A schema field of a directive attribute, optional unless ``required``: one call per attribute."""
    return field(title=title, description=description, required=required, **kw)


class IStoreDirective(Interface):
    """Register the lock store the locks of this process use.

    Every attribute is text parsed by :class:`.config.Settings` as its
    environment variable would be, so an empty attribute counts as left out
    and ``dir`` must be absolute (a zope.schema Float or Choice would refuse
    an empty value, and a Path would turn an empty or relative ``dir`` into
    the ZCML package's directory, or the working directory).  The settings
    that are not the store's (``txn_wait``, ``metrics_dir``,
    ``metrics_interval``) are not attributes: this directive's settings only
    build the store, and the readers of those three would never see them.
    """

    backend = _field(
        Text, "Store", "fallback (memcached, the lock directory while memcached is down), memcached or file.",
    )
    servers = _field(Text, "memcached servers", "Comma-separated host:port, [ipv6]:port or unix socket paths.")
    dir = _field(Text, "Lock directory", "Absolute directory of the file store.")
    connect_timeout = _field(Text, "Connect timeout", "Seconds before an unreachable memcached counts as down.")
    io_timeout = _field(Text, "I/O timeout", "Seconds before a hung memcached counts as down.")
    retry = _field(Text, "Retry", "Seconds a down memcached is left alone before it is tried again.")
    prefix = _field(Text, "Key prefix", "Namespace of the package's keys in memcached.")
    tls_ca = _field(Text, "TLS CA", "Absolute path of a CA file: TLS to every memcached server, verified by it.")
    tls_cert = _field(Text, "TLS client certificate", "Absolute path of the client certificate (with tls_key).")
    tls_key = _field(Text, "TLS client key", "Absolute path of the client certificate's key, without a passphrase.")


#: Store directive attribute -> Settings field, where the names differ.
_SETTING_NAMES = {"dir": "lock_dir"}


class StoreFactory:
    """Builds the store of a ``<memcachedlock:store>`` when its utility is registered."""

    def __init__(self, settings: config.Settings) -> None:
        self.settings = settings

    def __call__(self) -> Any:
        return make_backend(self.settings)

    def __repr__(self) -> str:
        return "StoreFactory(%r)" % (self.settings,)


def store_settings(**given: Any) -> config.Settings:
    """The environment's settings with the directive's attributes applied; errors name the value.

    An attribute that is empty or blank counts as left out, as an empty
    environment variable counts as unset.  Values are taken as written:
    ``dir`` must be absolute like MEMCACHEDLOCK_DIR (no ``~`` or ``${VAR}``,
    which would depend on each process's environment).
    """
    changes = {}
    for attribute, value in given.items():
        if not config.is_unset(value):
            changes[_SETTING_NAMES.get(attribute, attribute)] = value
    return dataclasses.replace(config.Settings.from_environ(), **changes)


def store(_context: Context, **given: Any) -> None:
    """Handler of ``<memcachedlock:store>``: check now, register the utility when the actions run."""
    from zope.component.zcml import utility

    try:
        settings = store_settings(**given)
    except MemcachedLockError as exc:
        raise ConfigurationError("memcachedlock:store: %s" % exc) from exc
    utility(_context, provides=ILockBackend, factory=StoreFactory(settings))


class ILockOptions(Interface):
    """The options of the lock decorators, passed on to ``lock``/``rlock``/``zlock`` as keywords.

    One field here is one more keyword; the decorator checks its value (a
    field parses the text only: the limits are :class:`..options.LockOptions`'s).
    A field's default other than None is passed as is; None means "the
    decorator's default".
    """

    timeout = _field(
        Float, "Lease", "Seconds the lock outlives a crashed holder (renewed while held).", default=DEFAULT_TIMEOUT,
    )
    interval = _field(
        Float, "Poll interval", "Longest pause, in seconds, between two attempts while waiting.",
        default=DEFAULT_INTERVAL,
    )
    wait = _field(
        Float, "Wait", "Longest wait for the lock in seconds (default: the lease plus two), then LockTimeout.",
    )
    policy = _field(
        Choice, "zlock policy",
        "adaptive (the default: always while the key's writers meet, on-conflict while they do not), "
        "always (lock each call until the transaction ends) or on-conflict (optimistic: "
        "lock at commit, and lock the whole retry after a ConflictError); zlock only.",
        values=POLICIES,
    )
    conflicts = _field(
        Int, "ConflictErrors before the lock",
        "Policy on-conflict: after this many ConflictErrors in a row, a thread's next try takes the "
        "lock when it begins (default 1; the catalog patch uses 3: Zope's last try); zlock only.",
    )
    move_view = _field(
        Bool, "Move stale views",
        "zlock: move a transaction's view forward in place, instead of a retry, when it cannot have "
        "seen the old state of anything newer commits changed (default true; false for code that keeps "
        "values across transactions, see docs/zlock.rst).",
    )


class ILockDirective(ILockOptions):
    """Lock a method of a class with a distributed lock."""

    class_ = _field(GlobalObject, "Class", "Dotted name of the class whose method is locked.", required=True)
    method = _field(PythonIdentifier, "Method", "Name of the method to lock (or give methods).")
    methods = _field(
        Tokens, "Methods",
        "Names of the methods to lock alike, separated by spaces (or give method): one registration each.",
        value_type=PythonIdentifier(),
    )
    key = _field(
        GlobalObject, "Key function",
        "Dotted name of get_key(fun, self, *args, **kw), returning what the lock protects.", required=True,
    )
    kind = _field(
        Choice, "Kind", "zlock (held until the transaction ends, retries via LockBusy), lock or rlock.",
        values=patch.KINDS, default="zlock",
    )
    name = _field(
        TextLine, "Lock name",
        "Dotted name shared by methods that must exclude each other (default: the method's own).",
    )


class IImmediateRetryDirective(Interface):
    """Let Zope's publisher retry LockBusy without its random back-off."""


def method_names(method: str | None, methods: list[str] | None) -> list[str]:
    """The methods a lock directive names: ``method`` or ``methods``, exactly one of them, no name twice.

    An empty ``methods`` counts as left out, as an empty setting does.
    """
    methods = methods or None
    if method is not None and methods is not None:
        raise ConfigurationError("give method or methods, not both (method=%r, methods=%r)"
                                 % (method, " ".join(methods)))
    names = [method] if method is not None else list(methods or ())
    if not names:
        raise ConfigurationError("give the method to lock: method (one name) or methods (names separated by spaces)")
    twice = sorted({each for each in names if names.count(each) > 1})
    if twice:
        raise ConfigurationError("methods lists %s more than once" % ", ".join(map(repr, twice)))
    return names


def lock(_context: Context, class_: type, key: GetKey, method: str | None = None, methods: list[str] | None = None,
         kind: str = "zlock", name: str | None = None, **options: Any) -> None:
    """Handler of ``<memcachedlock:lock>``: check everything now, patch each method when the actions run."""
    names = method_names(method, methods)
    try:
        patch.decorator(kind, key, options)
        patch.check_lock_name(name)
        for each in names:
            patch.find_method(class_, each)
    except MemcachedLockError as exc:
        raise ConfigurationError(str(exc)) from exc
    for each in names:
        _context.action(
            discriminator=("unimr.memcachedlock:lock", class_, each),
            callable=patch.lock_method,
            args=(class_, each, key, kind, name),
            kw=dict(options),
        )


def immediate_retry(_context: Context) -> None:
    """Handler of ``<memcachedlock:immediateRetry/>``."""
    _context.action(
        discriminator=("unimr.memcachedlock:immediateRetry",),
        callable=publisher.install,
        args=(),
    )
