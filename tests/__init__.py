"""Sluice test suite: unit tests beside integration tests against real servers on loopback."""
