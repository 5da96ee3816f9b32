"""Minibatch pipeline (data_flow) and buffered array writers."""

__all__: list[str] = []
