"""Real servers for the tests: memcached on a free loopback port (the package's shared starter).

Nothing here is mocked: see :mod:`unimr.memcachedlock.tools.servers`.
"""

import subprocess

from unimr.memcachedlock.tools.servers import MemcachedServer, free_port, wait_for_port


def stop_process(proc: subprocess.Popen, grace: float) -> None:
    """End a server process: SIGTERM, then SIGKILL if it is still there after ``grace`` seconds."""
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


__all__ = ["MemcachedServer", "free_port", "stop_process", "wait_for_port"]
