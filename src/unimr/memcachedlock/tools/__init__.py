"""The command line and its tools: ``memcachedlock`` (cli), its bench and demo.

They sit above the lock core, which never imports them (``tests/test_layout.py``).
"""
