"""The engines a worker can run, behind one interface (``engine.py``); each engine folder names its parts alike:
``layout``, ``loading``, ``crop_rule``, ``engine``, ``random_weights`` (README.md here)."""
