"""The HTTP API: fal's queue protocol, uploads, auth, metrics and the playground. Never imports torch."""
