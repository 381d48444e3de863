"""Procedural faces with exact landmarks and their forgeries, for the demo and the tests."""
