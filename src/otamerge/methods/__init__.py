"""Merge methods: ``catalog`` declares each one (torch-free), ``registry`` maps each name to
the engine's per-tensor function, one module per method or family."""
