"""A self-hosted lip-sync inference server speaking fal's queue protocol (``pipio/lipsync``).

One package, in layers (README's folder table; ``tests/test_layers.py`` keeps the arrows one-way), bottom up:
``contract`` (schema, errors, settings) · ``storage`` | ``media`` · ``queue`` | ``model`` · ``worker`` | ``server``
· ``client`` · ``training`` | ``evaluation`` | ``testing`` · ``cli``.
"""
