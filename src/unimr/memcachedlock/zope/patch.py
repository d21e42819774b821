"""Locking a method of a class in place, and undoing it.

The directive ``<memcachedlock:lock>`` calls :func:`lock_method`.  The method
is replaced on the class by a wrapper built with the package's decorators
(``lock``, ``rlock`` or ``zlock``), so the lock logic lives in one place.
The wrapper keeps the original's name, docstring (Zope publishes only
methods with one), signature (``inspect.signature`` follows ``__wrapped__``)
and return value; security declarations (``<name>__roles__``) are class
attributes beside the method and are left untouched.

Several methods can share one lock by giving the same ``name``: the lock
name is then ``<name>:<key>`` instead of ``<module>.<qualname>:<key>``.  The
catalog patch needs this, because ``catalog_object`` and
``uncatalog_object`` change the same catalog: two locks per catalog could
deadlock two clients that take them in opposite orders.

Every patch is recorded and can be undone with :func:`unlock_method` or
:func:`undo_all` (also run by ``zope.testing.cleanup.cleanUp``).  Undoing
never drops a patch another add-on put on top of ours: if the class no longer
holds our wrapper, the wrapper stays where it is (the other patch calls it)
and only stops locking; if it does, the method it replaced is put back.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import re
import threading
from collections.abc import Callable
from typing import Any

from .. import decorators
from ..decorators import GetKey
from ..errors import ConfigurationError
from ..options import DEFAULT_CONFLICTS
from ..zodb import zlock
from .publisher import uninstall, warn_if_retries_end_first

logger = logging.getLogger(__name__)

KINDS = ("zlock", "lock", "rlock")

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")

#: A method, and a function put in its place on the class.
Method = Callable[..., object]
#: What a decorator factory returns for one key function and options: it turns a method into a locked one.
Decorate = Callable[[Method], Method]


@dataclasses.dataclass(frozen=True)
class Patch:
    """One locked method: what was there before and what replaced it."""

    cls: type
    method: str
    original: Method
    own: bool
    wrapper: Method
    kind: str
    name: str | None
    options: dict[str, Any]
    #: ``calls[0]`` is what the wrapper runs: the locked method, or ``original`` once undone.
    calls: list[Method]


_patches: dict[tuple[type, str], Patch] = {}
_guard = threading.Lock()


def decorator_for(kind: str) -> Callable[..., Decorate]:
    """The decorator factory of ``kind`` ('zlock', 'lock' or 'rlock')."""
    if kind == "lock":
        return decorators.lock
    if kind == "rlock":
        return decorators.rlock
    if kind == "zlock":
        return zlock
    raise ConfigurationError("unknown lock kind %r: use one of %s" % (kind, ", ".join(KINDS)))


#: Options only zlock takes (zlock itself checks their values).
ZLOCK_OPTIONS = ("policy", "conflicts", "move_view")


def check_zlock_options(kind: str, options: dict[str, Any]) -> None:
    """Name the option and the kind if a zlock-only option is given to another kind."""
    if kind == "zlock":
        return
    for option in ZLOCK_OPTIONS:
        if options.get(option) is not None:
            raise ConfigurationError("%s %r applies to kind zlock only, not %r" % (option, options[option], kind))


def check_lock_name(name: str | None) -> str | None:
    """A shared lock name must be a dotted Python-style name (it becomes part of every key)."""
    if name is None:
        return None
    if not isinstance(name, str) or not _NAME.match(name) or len(name) > 120:
        raise ConfigurationError(
            "bad lock name %r: use a dotted name such as Products.ZCatalog.ZCatalog.ZCatalog" % (name,)
        )
    return name


def _named(original: Method, name: str) -> Method:
    """A pass-through to ``original`` whose module and qualname spell ``name``.

    The decorators build the lock name from the decorated function's
    ``__module__`` and ``__qualname__``; this gives several methods one name.
    """

    def call(*args: Any, **kw: Any) -> Any:
        return original(*args, **kw)

    functools.update_wrapper(call, original)
    module, _, qualname = name.rpartition(".")
    call.__module__ = module
    call.__qualname__ = qualname
    return call


def find_method(cls: type, method: str) -> tuple[Method, bool]:
    """``cls.<method>`` and whether ``cls`` defines it itself; ConfigurationError naming what is wrong."""
    if not isinstance(cls, type):
        raise ConfigurationError("cannot lock a method of %r: it is not a class" % (cls,))
    if not isinstance(method, str) or not method.isidentifier():
        raise ConfigurationError("bad method name %r for %s" % (method, cls.__qualname__))
    own = method in cls.__dict__
    original = cls.__dict__[method] if own else getattr(cls, method, None)
    if original is None:
        raise ConfigurationError("%s.%s has no method %r" % (cls.__module__, cls.__qualname__, method))
    if isinstance(original, (staticmethod, classmethod)) or not callable(original):
        raise ConfigurationError(
            "%s.%s.%s is not a plain method (found %s)"
            % (cls.__module__, cls.__qualname__, method, type(original).__name__)
        )
    return original, own


def decorator(kind: str, get_key: object, options: dict[str, Any]) -> Decorate:
    """The ``kind`` decorator for ``get_key`` with ``options``; errors name the bad value.

    The options are the decorator's keywords (``timeout``, ``interval``,
    ``wait``, ...), checked by the decorator itself, so every option it
    accepts is accepted here and nothing else.
    """
    if not callable(get_key):
        raise ConfigurationError("key function %r is not callable" % (get_key,))
    factory = decorator_for(kind)
    check_zlock_options(kind, options)
    try:
        return factory(get_key, **options)
    except TypeError as exc:  # an option the decorator does not take
        raise ConfigurationError("%s lock: %s" % (kind, exc)) from None


def lock_method(
    cls: type,
    method: str,
    get_key: GetKey,
    kind: str = "zlock",
    name: str | None = None,
    **options: Any,
) -> Patch:
    """Replace ``cls.<method>`` by a version that holds a ``kind`` lock while it runs.

    ``get_key(fun, self, *args, **kw)`` names what is protected; ``options``
    are the decorator's keywords.  Locking a method that is already locked is
    a ConfigurationError: undo it first.
    """
    decorate = decorator(kind, get_key, options)
    name = check_lock_name(name)
    with _guard:
        if (cls, method) in _patches:
            raise ConfigurationError(
                "%s.%s.%s is already locked; undo that patch first" % (cls.__module__, cls.__qualname__, method)
            )
        original, own = find_method(cls, method)
        target = _named(original, name) if name else original
        calls = [decorate(target)]

        def wrapper(*args: Any, **kw: Any) -> Any:
            return calls[0](*args, **kw)

        functools.update_wrapper(wrapper, original)  # sets ``__wrapped__`` too
        setattr(cls, method, wrapper)
        patch = Patch(cls, method, original, own, wrapper, kind, name, dict(options), calls)
        _patches[(cls, method)] = patch
        first = len(_patches) == 1
    # One line at start-up says locking is on; the other methods (catalog.zcml locks eleven) at debug level.
    (logger.info if first else logger.debug)(
        "%s.%s.%s now runs under a %s (lock name %s)%s", cls.__module__, cls.__qualname__, method, kind,
        name or "%s.%s" % (original.__module__, original.__qualname__),
        "; further locked methods are logged at debug level" if first else "")
    if kind == "zlock" and options.get("policy") == "on-conflict":
        warn_if_retries_end_first("%s.%s" % (cls.__qualname__, method), options.get("conflicts", DEFAULT_CONFLICTS))
    return patch


def unlock_method(cls: type, method: str) -> bool:
    """Stop locking ``cls.<method>``; False if it was not locked.

    If the class still holds our wrapper, the method it replaced is put back.
    If another patch replaced our wrapper since (and so calls it), our wrapper
    stays in place and only stops locking: removing it would drop that patch.
    """
    with _guard:
        patch = _patches.pop((cls, method), None)
        if patch is None:
            return False
        patch.calls[0] = patch.original
        current = cls.__dict__.get(method)
        if current is patch.wrapper:
            if patch.own:
                setattr(cls, method, patch.original)
            else:
                delattr(cls, method)
    if current is patch.wrapper:
        logger.info("%s.%s.%s is no longer locked", cls.__module__, cls.__qualname__, method)
    else:
        logger.info("%s.%s.%s is no longer locked; another patch (%s) replaced ours since, so ours "
                    "stays beneath it and calls the original unlocked", cls.__module__, cls.__qualname__,
                    method, getattr(current, "__qualname__", type(current).__name__))
    return True


def patches() -> list[Patch]:
    """The methods locked now."""
    with _guard:
        return list(_patches.values())


def undo_all() -> int:
    """Undo every patch of this module (also the publisher's); return how many methods were restored."""
    count = 0
    for patch in patches():
        if unlock_method(patch.cls, patch.method):
            count += 1
    uninstall()
    return count


try:
    from zope.testing.cleanup import addCleanUp
except ImportError:  # zope.testing is a test helper; a site without it simply has no hook.
    pass
else:
    addCleanUp(undo_all)
