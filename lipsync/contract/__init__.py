"""What every layer agrees on: the input/output schema, typed errors, settings. No Redis, no torch."""
