"""Helpers for running the stack locally and on EC2."""
