"""Generated code of the proto package data_wire.v1 (run protos/generate.py)."""
