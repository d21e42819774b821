"""Turning any caller's key into a safe lock name.

memcached's text protocol splits on whitespace, ends commands at CR/LF and
allows keys of at most 250 bytes; a file name may not contain ``/`` or NUL.
A caller's key is arbitrary (a physical path, a title, 5,000 characters of
anything), so it never reaches a store raw.  The mapping is injective:
readable keys stay readable (``list`` shows them), everything else is
percent-encoded, and a long key is cut and completed by a hash marked with
``#``, a character the encoding never produces.
"""

from __future__ import annotations

import functools
import hashlib
import re

from .errors import InvalidKey

#: Longest name handed to a backend; leaves room for the store's prefix and suffixes.
MAX_NAME_LENGTH = 200

_SAFE = re.compile(rb"[A-Za-z0-9._~:@+=,!-]")
_ESCAPES = {b: (chr(b) if _SAFE.fullmatch(bytes([b])) else "%%%02X" % b) for b in range(256)}
_HASH_MARK = "#"


def _encode(data: bytes) -> str:
    return "".join(_ESCAPES[b] for b in data)


#: Names of recently used keys are cached, but only of keys up to CACHED_KEY_BYTES long:
#: the cache holds at most CACHE_ENTRIES * (CACHED_KEY_BYTES + MAX_NAME_LENGTH) bytes of
#: keys and names (about 5 MB), however long the keys callers pass.
CACHE_ENTRIES = 4096
CACHED_KEY_BYTES = 1024


def _compute_name(data: bytes) -> str:
    # Each byte encodes to 1 or 3 characters, so only the first MAX_NAME_LENGTH bytes can show.
    encoded = _encode(data[:MAX_NAME_LENGTH])
    if len(encoded) <= MAX_NAME_LENGTH and len(data) <= MAX_NAME_LENGTH:
        return encoded
    digest = hashlib.sha256(data).hexdigest()[:40]
    return encoded[: MAX_NAME_LENGTH - len(digest) - 1] + _HASH_MARK + digest


_cached_name = functools.lru_cache(maxsize=CACHE_ENTRIES)(_compute_name)


def _name_from_bytes(data: bytes) -> str:
    if len(data) <= CACHED_KEY_BYTES:
        return _cached_name(data)
    return _compute_name(data)


def key_to_bytes(key: object) -> bytes:
    """The bytes a key stands for: UTF-8 for str, itself for bytes, digits for int."""
    if isinstance(key, bytes):
        return key
    if isinstance(key, str):
        return key.encode("utf-8", "surrogatepass")
    if isinstance(key, int) and not isinstance(key, bool):
        try:
            return str(key).encode("ascii")
        except ValueError:  # more digits than sys.get_int_max_str_digits()
            raise InvalidKey(
                "lock key is an int of %d bits, too long to write in decimal" % key.bit_length()
            ) from None
    raise InvalidKey(
        "lock key must be str, bytes or int, not %s: %r" % (type(key).__name__, _short(key))
    )


def lock_name(key: object) -> str:
    """The safe ASCII name (at most MAX_NAME_LENGTH characters) for ``key``.

    ``'a b'`` and ``b'a b'`` give the same name, as do ``7`` and ``'7'``.
    """
    if isinstance(key, str) and len(key) <= MAX_NAME_LENGTH and key.isascii():
        return _name_from_bytes(key.encode("ascii"))
    return _name_from_bytes(key_to_bytes(key))


def decode_name(name: str) -> str:
    """Best-effort readable form of a lock name, for listings (not injective)."""
    from urllib.parse import unquote

    return unquote(name, errors="backslashreplace")


def shown(key: object) -> str:
    """``key`` as text for messages: ``'<name>'``, not a bytes repr (long keys shortened as their names are)."""
    return "'%s'" % decode_name(lock_name(key))


def _short(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
