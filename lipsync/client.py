"""Point the official Python client (``fal-client``) at this server, over plain http or https.

``fal-client`` builds its URLs from module constants with ``https://`` and fal's hosts hard-coded
(reference/queue-protocol.md §10.2). Over HTTPS, the environment alone is enough and needs no code:
``FAL_QUEUE_RUN_HOST=host:port FAL_RUN_HOST=host:port/run`` (set before importing fal_client). For plain
http, or to keep uploads local too, call this once after importing fal_client::

    import fal_client
    from lipsync.client import point_fal_client

    point_fal_client("http://127.0.0.1:8000")
    fal_client.subscribe("pipio/lipsync", arguments={...})

It overrides the module's URL constants, the seam fal's own tests use; re-check it on fal-client upgrades
(pinned: 1.0.3). Override before the first upload: the upload token manager copies the REST URL once.
"""

from __future__ import annotations


def point_fal_client(base_url: str) -> None:
    import fal_client.client as client

    base = base_url.rstrip("/")
    client.QUEUE_URL_FORMAT = f"{base}/"
    client.RUN_URL_FORMAT = f"{base}/run/"
    client.REST_URL = base
    client.CDN_URL = base
