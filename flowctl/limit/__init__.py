"""Pure limit algorithms: they take measurements and ``now`` and return numbers."""
