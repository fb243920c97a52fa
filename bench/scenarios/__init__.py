"""Benchmark scenarios (``python -m bench SCENARIO``): overload, step, priority, overhead.

Each module has ``main(argv) -> int``; ``common`` holds what they share.
"""
