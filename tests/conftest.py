"""Shared pytest configuration. Real-component gates live in tests/realenv.py."""
