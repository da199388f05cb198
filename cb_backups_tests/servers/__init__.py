"""Launchers for real servers used by the tests and the demo."""
