"""Hubbub frame protocol: schemas, codec, error codes, and a small async client."""
