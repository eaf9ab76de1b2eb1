"""``lipsync data prepare`` and ``lipsync train``: shards and an accelerate trainer for the pipio model."""
