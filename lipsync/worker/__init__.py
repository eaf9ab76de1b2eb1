"""The RQ worker: the per-request job interface (``job``), the lip-sync orchestration (``orchestration``), and the
runtime around them (progress, cancel, heartbeats, inputs, uploads, webhooks)."""
