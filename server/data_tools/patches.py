"""Patch extraction and patch-dataset building."""

__all__: list[str] = []
