"""Uncontended acquire+release against a raw pymemcache add+delete pair, in one run.

    .venv/bin/python benchmarks/latency.py [--servers host:port] [-n 2000] [--rounds 5]

Starts a private memcached on a free loopback port unless ``--servers`` is given.
Exit status 0 if the ratio meets the goal (at most 1.6x).
"""

import sys

from unimr.memcachedlock.tools.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "latency", "--check", *sys.argv[1:]]))
