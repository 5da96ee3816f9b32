"""Streams of batches: a StreamRequest parsed into a plan, served as a data_flow, resumable by cursor."""
