"""What the ``memcachedlock`` command reads: the package's settings, a Zope instance's, the command line's.

``list``, ``show``, ``break`` and ``check`` read the same environment as the
package; ``--zope-conf`` puts a Zope instance's ``<environment>`` and
``<memcachedlock:store>`` over it, and ``--servers``, ``--backend`` and
``--dir`` override both for one call.
"""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING

from ..config import Settings, is_unset
from ..errors import ConfigurationError

if TYPE_CHECKING:
    from .zopeconf import InstanceConfig


def load_settings(args: argparse.Namespace) -> Settings:
    """The package's settings from the environment, with the command line's overrides.

    An override is parsed as its variable would be: ``--dir ""`` is no
    ``--dir`` (as ``MEMCACHEDLOCK_DIR=`` is no variable), ``--dir locks`` is
    refused as ``MEMCACHEDLOCK_DIR=locks`` is.
    """
    instance = instance_config(args)
    env = instance.environ(dict(os.environ)) if instance else dict(os.environ)
    for option, variable in (("servers", "MEMCACHEDLOCK_SERVERS"), ("backend", "MEMCACHEDLOCK_BACKEND"),
                             ("dir", "MEMCACHEDLOCK_DIR")):
        value: str | None = getattr(args, option, None)
        if value is not None and not is_unset(value):
            env[variable] = value
            if instance:
                instance.store.pop(_STORE_ATTRIBUTES.get(option, option), None)
    settings = Settings.from_environ(env)
    if instance and instance.store:
        unknown = sorted(set(instance.store) - set(_STORE_FIELDS))
        if unknown:
            raise ConfigurationError("<memcachedlock:store> in %s: unknown attribute %s"
                                     % (instance.store_file, ", ".join(unknown)))
        changes = {_STORE_FIELDS[name]: value for name, value in instance.store.items() if not is_unset(value)}
        try:
            settings = settings.replace(**changes)
        except ConfigurationError as exc:
            raise ConfigurationError("<memcachedlock:store> in %s: %s" % (instance.store_file, exc)) from None
    return settings


ZOPE_CONF_HELP = ("a Zope instance's zope.conf: take its <environment> and the <memcachedlock:store> of its "
                  "site ZCML over this shell's environment")
#: The store directive's attributes and the settings they give (``zope/directives.py``'s IStore).
_STORE_FIELDS = {"backend": "backend", "servers": "servers", "dir": "lock_dir", "connect_timeout": "connect_timeout",
                 "io_timeout": "io_timeout", "retry": "retry", "prefix": "prefix", "tls_ca": "tls_ca",
                 "tls_cert": "tls_cert", "tls_key": "tls_key"}
#: Command-line options that override a store directive's attribute.
_STORE_ATTRIBUTES = {"servers": "servers", "backend": "backend", "dir": "dir"}


def instance_config(args: argparse.Namespace) -> InstanceConfig | None:
    """What ``--zope-conf`` says (read once per command), or None without it."""
    path: str | None = getattr(args, "zope_conf", None)
    if path is None or is_unset(path):
        return None
    cached: InstanceConfig | None = getattr(args, "_instance", None)
    if cached is None:
        from .zopeconf import read_zope_conf

        cached = args._instance = read_zope_conf(path)
    return cached


def describe_store(settings: Settings) -> str:
    """Which store the settings name, in words: what ``list`` says it looked at."""
    servers = "memcached %s%s" % (",".join(str(s) for s in settings.servers), " (TLS)" if settings.tls_ca else "")
    where = {"memcached": servers, "file": "the lock directory %s" % settings.lock_dir,
             "fallback": "%s and the lock directory %s" % (servers, settings.lock_dir)}[settings.backend]
    return "%s (prefix %s)" % (where, settings.prefix)
