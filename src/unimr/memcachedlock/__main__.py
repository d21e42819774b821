"""``python -m unimr.memcachedlock``: the ``memcachedlock`` command."""

import sys

from .tools.cli import main

sys.exit(main())
