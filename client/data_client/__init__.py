"""Trainer-side client of a data node."""
