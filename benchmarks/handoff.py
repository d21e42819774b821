"""Two processes, then two threads, taking turns on one key; and the load while waiting.

    .venv/bin/python benchmarks/handoff.py [--servers host:port] [--duration 0.4] [--hold 0.005]
    .venv/bin/python benchmarks/handoff.py --waiting     # also the waiting-load table

Starts a private memcached on a free loopback port unless ``--servers`` is given.
Exit status 0 if the handoff goals are met (p50 <= 2 ms between processes,
<= 0.5 ms between threads, >= 90% of turns alternating).
"""

import sys

from unimr.memcachedlock.tools.cli import main

if __name__ == "__main__":
    argv = sys.argv[1:]
    if "--waiting" in argv:
        argv.remove("--waiting")
        status = main(["bench", "handoff", "--check", *argv])
        sys.exit(main(["bench", "waiting", *argv]) or status)
    sys.exit(main(["bench", "handoff", "--check", *argv]))
