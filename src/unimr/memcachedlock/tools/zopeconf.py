"""What a Zope instance's configuration says about its lock store (``memcachedlock --zope-conf``).

A site configures the lock store in its ``zope.conf`` (``<environment>``
with ``MEMCACHEDLOCK_*`` variables) or in its ZCML (``<memcachedlock:store>``),
not in the shell an operator opens next to it.  Read from the shell's
environment alone, ``memcachedlock list`` would look at the default store
and report "no locks held" while the site's locks are elsewhere.  This
module reads both places without starting Zope:

* ``zope.conf``: ``%define`` and ``$NAME``/``${NAME}`` substitution, the
  ``<environment>`` section, ``instancehome`` and ``site-definition``
  (default ``$INSTANCE_HOME/etc/site.zcml``);
* the site's ZCML from there, following ``<include>`` and
  ``<includeOverrides>`` by ``file``, ``files`` and ``package``, for
  ``<memcachedlock:store>`` (the last one found wins, as an override would).

Zope applies ``<environment>`` to its process before it loads the ZCML, so
the result is: the shell's environment, then zope.conf's ``<environment>``
over it, then the store directive's attributes over both.
"""

from __future__ import annotations

import dataclasses
import glob
import importlib.machinery
import importlib.util
import os
import re
import sys
import xml.etree.ElementTree as ElementTree

from ..errors import ConfigurationError

#: The namespace of the package's ZCML directives.
NAMESPACE = "http://namespaces.zope.org/memcachedlock"
ZOPE_NAMESPACE = "http://namespaces.zope.org/zope"
#: ZCML files read at most while looking for the store directive (Plone's tree has hundreds).
MAX_FILES = 2000
_VARIABLE = re.compile(r"\$(\$|[A-Za-z_][A-Za-z0-9_]*|\{[A-Za-z_][A-Za-z0-9_]*\})")


@dataclasses.dataclass
class InstanceConfig:
    """The lock-store settings a Zope instance's configuration gives, and where each came from."""

    path: str
    #: The ``<environment>`` section of zope.conf.
    environment: dict[str, str] = dataclasses.field(default_factory=dict)
    #: The attributes of the store directive that wins, and the file it is in.
    store: dict[str, str] = dataclasses.field(default_factory=dict)
    store_file: str = ""
    site_zcml: str = ""

    def environ(self, base: dict[str, str]) -> dict[str, str]:
        """``base`` (the shell's environment) with zope.conf's ``<environment>`` over it."""
        return {**base, **self.environment}

    def sources(self) -> str:
        """Where the settings came from, for the command's output."""
        found = ["%s <environment>" % self.path] if any(k.startswith("MEMCACHEDLOCK_") for k in self.environment) \
            else []
        if self.store:
            found.append("<memcachedlock:store> in %s" % self.store_file)
        return ", ".join(found) or "%s (it sets nothing for the locks: the defaults)" % self.path


def read_zope_conf(path: str) -> InstanceConfig:
    """The lock-store settings of the Zope instance whose zope.conf is ``path``; ConfigurationError names it."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError("cannot read --zope-conf %r: %s" % (path, exc)) from None
    found = InstanceConfig(path=path)
    defines = {"INSTANCE": os.path.dirname(os.path.dirname(os.path.abspath(path)))}
    section: list[str] = []
    instancehome = site = ""
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.lower().startswith("%define"):
            name, _, value = line[len("%define"):].strip().partition(" ")
            defines[name] = _substitute(value.strip(), defines, path, number)
            continue
        line = _substitute(line, defines, path, number)
        if line.startswith("</"):
            section = section[:-1]
        elif line.startswith("<") and line.endswith(">"):
            section.append(line[1:-1].split()[0].lower())
        elif section == ["environment"]:
            name, _, value = line.partition(" ")
            found.environment[name] = value.strip()
        elif not section:
            name, _, value = line.partition(" ")
            if name.lower() == "instancehome":
                instancehome = value.strip()
            elif name.lower() == "site-definition":
                site = value.strip()
    home = instancehome or defines["INSTANCE"]
    found.site_zcml = site or os.path.join(home, "etc", "site.zcml")
    if os.path.exists(found.site_zcml):
        _find_store(found)
    return found


def _substitute(text: str, defines: dict[str, str], path: str, number: int) -> str:
    def value(match: re.Match[str]) -> str:
        name = match.group(1).strip("{}")
        if name == "$":
            return "$"
        if name not in defines:
            raise ConfigurationError("--zope-conf %s, line %d: $%s is not defined (%%define)" % (path, number, name))
        return defines[name]

    return _VARIABLE.sub(value, text)


def _find_store(found: InstanceConfig) -> None:
    """Walk the site's ZCML from ``found.site_zcml``, keeping the last store directive's attributes."""
    pending = [found.site_zcml]
    seen: set[str] = set()
    while pending and len(seen) < MAX_FILES:
        path = os.path.abspath(pending.pop(0))
        if path in seen:
            continue
        seen.add(path)
        try:
            root = ElementTree.parse(path).getroot()
        except (OSError, ElementTree.ParseError):
            continue  # Zope itself would refuse it; what the lock store is cannot be told from it
        for element in root.iter():
            if element.tag == "{%s}store" % NAMESPACE:
                found.store = {k: v for k, v in element.attrib.items() if "}" not in k}
                found.store_file = path
            elif element.tag in ("{%s}include" % ZOPE_NAMESPACE, "{%s}includeOverrides" % ZOPE_NAMESPACE):
                pending.extend(_included(path, element.attrib))


def package_directory(package: str) -> str | None:
    """The directory of ``package``, found without running its code or its parents'.

    The dotted name is looked up on ``sys.path`` first.  For an editable
    install's import hook, ``find_spec`` is asked level by level as long as
    the levels above are namespace packages (importing those runs no code);
    the rest of the name is a path below the last package found.
    """
    parts = package.split(".")
    for entry in sys.path:
        candidate = os.path.join(entry or ".", *parts)
        if os.path.isdir(candidate):
            return candidate
    depth, spec = 1, _spec(parts[0])
    while spec is not None and depth < len(parts) and spec.origin in (None, "namespace"):
        depth, spec = depth + 1, _spec(".".join(parts[: depth + 1]))
    for root in (spec.submodule_search_locations or []) if spec is not None else []:
        candidate = os.path.join(root, *parts[depth:])
        if os.path.isdir(candidate):
            return candidate
    return None


def _spec(name: str) -> importlib.machinery.ModuleSpec | None:
    try:
        return importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None


def _included(path: str, attrib: dict[str, str]) -> list[str]:
    """The files an ``<include>`` in ``path`` names (none if its package cannot be found)."""
    directory = os.path.dirname(path)
    package = attrib.get("package")
    if package:
        found = package_directory(package)
        if found is None:
            return []
        directory = found
    if "files" in attrib:
        return sorted(glob.glob(os.path.join(directory, attrib["files"])))
    return [os.path.join(directory, attrib.get("file", "configure.zcml"))]
