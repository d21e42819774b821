"""Lock stores.  Each module holds one backend; :func:`..registry.make_backend` picks from the settings."""
