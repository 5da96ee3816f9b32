"""Random 2D image transformations for augmentation."""

__all__: list[str] = []
