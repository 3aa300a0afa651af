"""Shared plumbing used by every layer: user errors, atomic writes, the runner CLI, statistics."""
