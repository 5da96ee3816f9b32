"""Generic tools for loading, manipulating and creating datasets."""

__all__: list[str] = []
