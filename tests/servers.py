"""Real servers for the tests: memcached on a free loopback port (the package's shared starter).

Nothing here is mocked: see :mod:`unimr.memcachedlock.tools.servers`.
"""

from unimr.memcachedlock.tools.servers import MemcachedServer, free_port, wait_for_port

__all__ = ["MemcachedServer", "free_port", "wait_for_port"]
