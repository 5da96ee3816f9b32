"""Lazy views over arrays: delayed_view and multi_source_array."""

__all__: list[str] = []
