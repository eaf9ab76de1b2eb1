"""Decode, timeline edits, faces, masks, paste-back, encode and the on-disk frame store: plain functions on numpy
arrays (README.md here). Knows nothing of the queue, storage, worker or server."""
