"""``python -m unimr.memcachedlock``: the ``memcachedlock`` command."""

import sys

from .cli import main

sys.exit(main())
