"""Hubbub server: the asyncio/uvloop I/O shell around protocol/ and storage/."""
