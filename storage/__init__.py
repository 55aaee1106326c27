"""Hubbub storage: narrow async interfaces and one module per backend."""
