"""Real local processes (Redis, API, workers, ``lipsync serve``) and small real media, for the tests and the
benchmark scripts alike; and ``pipelines:reencode``, a small pipeline that exercises the worker path."""
