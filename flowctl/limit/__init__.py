"""Pure limit algorithms: they take measurements and ``now`` and return numbers.

Every algorithm implements ``LimitAlgorithm`` (``flowctl.limit.base``):
``Bbr`` (Little's law, the default), ``FixedLimit`` and ``Gradient`` (peers
for benchmarks). Submodules are imported on demand.
"""
