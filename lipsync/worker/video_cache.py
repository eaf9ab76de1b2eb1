"""The worker's video-side cache: what a request made of its video, kept for the next request with that video.

One template video lip-synced to many audio tracks decodes, tracks, crops and encodes the same frames every
time. This cache keeps, on the worker's local disk, content-addressed by the video's bytes and everything the
item depends on:

- ``source``: the probe, the face track and the face-ID embedding (key: the video's hash, every video-side field
  of the request — ``video_side_fields`` —, the face analyzer, whether the engine wants an identity);
- ``crops``: the engine's crops of the output timeline (key: the ``source`` key, the timeline itself, the
  engine's name, weights and crop size);
- ``encoder``: what the engine's image encoder made of those crops (key: the ``crops`` key, the weights'
  fingerprint, the device, and the engine's own ``encoder_cache_key``); inside, one array per encoder call,
  named by the engine with everything decided inside ``generate`` (batching), so a request that batches
  differently computes what it does not find.

Entries are single files ``<kind>-<key>.lsc``: the arrays, a JSON header, and a CRC-32 of all of it.
They are written to a temporary file in the same folder and renamed into place (atomic: two workers filling the
same entry leave one whole entry, the last rename's), verified on every read (a corrupt, truncated or foreign
file is deleted, logged once, and recomputed by the caller; never served), and evicted least recently used
first (a read touches the file's mtime) whenever a write takes the folder over its byte budget. Several
workers on one host may share the folder: eviction runs under an ``flock``, and a file evicted while another
process reads it stays readable to that process (POSIX unlink).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import struct
import tempfile
import threading
import time
import uuid
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from lipsync.storage.base import file_digest

log = logging.getLogger("lipsync.cache")

MAGIC = b"LSCACHE1"
"""First 8 bytes of every entry (format version 1)."""
DIGEST_BYTES = 4
"""The trailer: CRC-32 of everything before it (zlib's, ~1.5 GB/s here against BLAKE2b's ~0.35: it guards
against a disk's or a crash's damage, not an adversary; the content address itself is BLAKE2b)."""
SUFFIX = ".lsc"
STALE_TMP_S = 3600.0
"""A temporary file older than this (its writer died) is removed at the next eviction."""
NON_VIDEO_FIELDS = frozenset({
    "video", "audio", "use_custom_prompt", "custom_prompt", "seed", "vae_chunk_size", "vae_overlap_window_width",
    "frame_block_width", "feed_forward_num_splits", "face_id_cond_strength", "appearance_cond_strength",
    "skip_video_cache",
})
"""Request fields that never change the probe, the face track or the crops: the audio and the model's knobs
(an engine whose encoder depends on a knob says so in its ``encoder_cache_key``). Every OTHER field is keyed —
one added later (a speaker selection, a sync mode) is part of the key without anyone remembering to add it."""


def video_side_fields(params: Any) -> dict[str, Any]:
    """The validated request's fields that may change what is made of the video (see ``NON_VIDEO_FIELDS``)."""
    data = params.model_dump(mode="json") if hasattr(params, "model_dump") else dict(params)
    return {k: v for k, v in sorted(data.items()) if k not in NON_VIDEO_FIELDS}


def key_of(*parts: Any) -> str:
    """Hex key of JSON-able parts (canonical JSON, BLAKE2b-160)."""
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.blake2b(text.encode(), digest_size=20).hexdigest()




def array_digest(*arrays: np.ndarray) -> str:
    h = hashlib.blake2b(digest_size=20)
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.data)
    return h.hexdigest()


class CorruptEntry(ValueError):
    """An entry file that is not a whole, verified entry of this format."""


@dataclass
class Entry:
    """A verified entry: its JSON ``meta`` and its named arrays (read-only views of the file's bytes)."""

    meta: dict[str, Any]
    arrays: dict[str, np.ndarray]
    size: int


class EntryWriter:
    """Builds one entry in a temporary file: ``append`` arrays (a name's chunks in a row are one array,
    concatenated on axis 0), set ``meta``, then ``commit`` (renamed into place) or ``abort``."""

    def __init__(self, cache: "VideoCache", kind: str, key: str):
        self.cache, self.kind, self.key = cache, kind, key
        self.meta: dict[str, Any] = {}
        self.tmp = cache.directory / f".tmp-{kind}-{key}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._file = open(self.tmp, "wb")
        self._crc = 0
        self._offset = 0
        self._regions: list[list[Any]] = []  # [name, dtype, tail shape, rows, offset, nbytes]
        self._names: set[str] = set()
        self._done = False
        self._write(MAGIC)

    def _write(self, data) -> None:
        self._file.write(data)
        self._crc = zlib.crc32(data, self._crc)
        self._offset += len(memoryview(data).cast("B"))

    def append(self, name: str, chunk: np.ndarray) -> None:
        """Add a chunk; a disk error (full, gone) abandons the entry, never the request."""
        if self._done:
            return
        try:
            self._append(name, chunk)
        except OSError as exc:
            log.warning("cache: could not write a %s entry (%s); not kept", self.kind, exc)
            self.abort()

    def _append(self, name: str, chunk: np.ndarray) -> None:
        chunk = np.ascontiguousarray(chunk)
        if chunk.ndim == 0:
            chunk = chunk[None]
        last = self._regions[-1] if self._regions else None
        if last is not None and last[0] == name:
            if (last[1], tuple(last[2])) != (chunk.dtype.str, chunk.shape[1:]):
                raise ValueError(f"cache entry array {name!r}: chunk {chunk.dtype}{chunk.shape} does not continue it")
            last[3] += chunk.shape[0]
            last[5] += chunk.nbytes
        else:
            if name in self._names:
                raise ValueError(f"cache entry array {name!r} was already written")
            self._names.add(name)
            self._regions.append([name, chunk.dtype.str, list(chunk.shape[1:]), chunk.shape[0], self._offset,
                                  chunk.nbytes])
        self._write(chunk.data)

    def rows(self, name: str) -> int:
        return sum(r[3] for r in self._regions if r[0] == name)

    def commit(self) -> int | None:
        """Write the header and digest, rename into place, evict to the budget. Returns the entry's size, or
        None when it alone is over the budget or the disk refused it (not kept; the request goes on)."""
        if self._done:
            return None
        try:
            return self._commit()
        except OSError as exc:
            log.warning("cache: could not keep a %s entry (%s)", self.kind, exc)
            self.abort()
            self.tmp.unlink(missing_ok=True)
            return None

    def _commit(self) -> int | None:
        header = json.dumps({"kind": self.kind, "key": self.key, "meta": self.meta, "arrays": self._regions},
                            default=str).encode()
        self._write(header)
        self._write(struct.pack("<Q", len(header)))
        self._file.write(struct.pack("<I", self._crc))
        size = self._offset + DIGEST_BYTES
        self._file.close()
        self._done = True
        if size > self.cache.budget_bytes:
            self.tmp.unlink(missing_ok=True)
            log.info("cache: %s entry of %d bytes is over the whole budget (%d); not kept", self.kind, size,
                     self.cache.budget_bytes)
            return None
        path = self.cache.path(self.kind, self.key)
        os.replace(self.tmp, path)
        self.cache.evict(keep=path)
        return size

    def abort(self) -> None:
        if not self._done:
            self._done = True
            try:
                self._file.close()
            except OSError:
                pass
            self.tmp.unlink(missing_ok=True)


class VideoCache:
    """Entries in ``directory`` under ``budget_bytes`` (least recently used go first)."""

    def __init__(self, directory: Path, budget_bytes: int):
        self.directory = Path(directory)
        self.budget_bytes = int(budget_bytes)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock_path = self.directory / ".lock"
        self._thread_lock = threading.Lock()
        self.dropped = 0
        """Entries this process found corrupt and deleted."""

    @classmethod
    def from_settings(cls, settings) -> "VideoCache | None":
        if settings.cache_bytes <= 0:
            return None
        directory = settings.cache_dir or Path(tempfile.gettempdir()) / "lipsync-cache"
        return cls(directory, settings.cache_bytes)

    def path(self, kind: str, key: str) -> Path:
        return self.directory / f"{kind}-{key}{SUFFIX}"

    def writer(self, kind: str, key: str) -> EntryWriter:
        return EntryWriter(self, kind, key)

    def put(self, kind: str, key: str, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> int | None:
        try:
            writer = self.writer(kind, key)
        except OSError as exc:
            log.warning("cache: could not start a %s entry (%s); not kept", kind, exc)
            return None
        try:
            for name, value in arrays.items():
                writer.append(name, value)
            writer.meta = meta
            return writer.commit()
        finally:
            writer.abort()

    def get(self, kind: str, key: str, on_drop: Callable[[str], None] | None = None) -> Entry | None:
        """The verified entry, or None (absent; or corrupt: then deleted and said once, to the log and to
        ``on_drop``)."""
        path = self.path(kind, key)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:  # unreadable: a miss, never a failed request
            log.warning("cache: could not read %s (%s)", path.name, exc)
            return None
        try:
            entry = _parse(data, kind, key)
        except CorruptEntry as exc:
            path.unlink(missing_ok=True)
            self.dropped += 1
            message = f"Video cache: dropped a corrupt {kind} entry ({exc}); recomputing it"
            log.warning("%s: %s", message, path.name)
            if on_drop is not None:
                on_drop(message)
            return None
        try:
            os.utime(path)  # most recently used
        except FileNotFoundError:  # evicted meanwhile by another worker: this read is still whole
            pass
        return entry

    def entries(self) -> list[tuple[Path, float, int]]:
        """(path, mtime, size) of every entry, least recently used first."""
        out = []
        for p in self.directory.glob(f"*{SUFFIX}"):
            try:
                st = p.stat()
            except FileNotFoundError:
                continue
            out.append((p, st.st_mtime_ns, st.st_size))
        return sorted(out, key=lambda e: e[1])

    def total_bytes(self) -> int:
        return sum(size for _, _, size in self.entries())

    def evict(self, keep: Path | None = None) -> int:
        """Delete least recently used entries until the folder is within budget (never ``keep``); also stale
        temporary files of dead writers. Returns how many entries went."""
        removed = 0
        with self._thread_lock, open(self._lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            now = time.time()
            for tmp in self.directory.glob(".tmp-*"):
                try:
                    if now - tmp.stat().st_mtime > STALE_TMP_S:
                        tmp.unlink()
                except FileNotFoundError:
                    pass
            entries = self.entries()
            total = sum(size for _, _, size in entries)
            for path, _, size in entries:
                if total <= self.budget_bytes:
                    break
                if path == keep:
                    continue
                path.unlink(missing_ok=True)
                total -= size
                removed += 1
        if removed:
            log.info("cache: evicted %d least recently used entries (budget %d bytes)", removed, self.budget_bytes)
        return removed


def _parse(data: bytes, kind: str, key: str) -> Entry:
    minimum = len(MAGIC) + 8 + DIGEST_BYTES
    if len(data) < minimum or data[: len(MAGIC)] != MAGIC:
        raise CorruptEntry(f"{len(data)} bytes, not an entry of this format")
    body, digest = memoryview(data)[:-DIGEST_BYTES], data[-DIGEST_BYTES:]
    if struct.pack("<I", zlib.crc32(body)) != digest:
        raise CorruptEntry("checksum mismatch (truncated or changed)")
    (header_len,) = struct.unpack("<Q", body[-8:])
    try:
        header = json.loads(bytes(body[-8 - header_len : -8]))
    except ValueError as exc:
        raise CorruptEntry(f"unreadable header: {exc}") from None
    if header.get("kind") != kind or header.get("key") != key:
        raise CorruptEntry("another entry's content under this name")
    arrays = {}
    for name, dtype, tail, rows, offset, nbytes in header["arrays"]:
        arrays[name] = np.frombuffer(data, dtype=np.dtype(dtype), count=nbytes // np.dtype(dtype).itemsize,
                                     offset=offset).reshape(rows, *tail)
    return Entry(header["meta"], arrays, len(data))


# ----------------------------------------------------------------------------------------------- requests
@dataclass
class CacheReport:
    """What one request reused and filled, for its metrics."""

    reused: list[str] = field(default_factory=list)
    filled: list[str] = field(default_factory=list)
    saved_s: float = 0.0
    encoder_calls: int = 0
    """Image-encoder calls this request made (through the engine's memo)."""
    encoder_reused: int = 0
    """Image-encoder outputs it took from the cache instead."""
    encoder_s: float = 0.0
    """Seconds its image-encoder calls took."""

    def metrics(self) -> dict[str, Any]:
        return {"cache_reused": list(self.reused), "cache_filled": list(self.filled),
                "cache_saved_time": round(self.saved_s, 3), "encoder_calls": self.encoder_calls,
                "encoder_reused": self.encoder_reused, "encoder_time": round(self.encoder_s, 3)}


class EncoderMemo:
    """``memo(name, compute)``: the engine's image-encoder output ``name`` from the cache, or ``compute()``'d
    (and kept for the entry this request writes). ``compute`` returns an ndarray or a torch tensor; a cached
    value comes back as an ndarray of the same values in the same memory layout (strides: a channels-last tensor
    comes back channels-last, since the next convolution's kernel, so its bits, depends on it; bf16 is kept as
    float32: exact both ways)."""

    def __init__(self, found: Entry | None, report: CacheReport):
        self.found = found
        self.report = report
        self.values: dict[str, np.ndarray] = {}
        self.orders: dict[str, list[int]] = dict(found.meta.get("orders", {})) if found is not None else {}
        self.seconds = 0.0
        """Time spent computing what was not found."""
        self.missed = 0

    def __call__(self, name: str, compute: Callable[[], Any]) -> Any:
        if self.found is not None and name in self.found.arrays and name in self.orders:
            dense = self.found.arrays[name]
            self.values[name] = dense
            self.report.encoder_reused += 1
            inverse = np.argsort(self.orders[name])
            return np.array(dense.transpose(inverse), order="K")  # writable, in the computed value's layout
        started = time.perf_counter()
        value = compute()
        array = _to_numpy(value)  # on a GPU this waits for the encoder: its time is then measured whole
        self.seconds += time.perf_counter() - started
        self.report.encoder_s += time.perf_counter() - started
        order = [int(i) for i in np.argsort([-s for s in array.strides], kind="stable")]
        self.values[name] = np.array(array.transpose(order), order="C", copy=True)  # the engine may reuse its buffer
        self.orders[name] = order
        self.report.encoder_calls += 1
        self.missed += 1
        return value


def _to_numpy(value: Any) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    import torch

    tensor = value.detach()
    if tensor.dtype == torch.bfloat16:
        tensor = tensor.float()
    return tensor.cpu().numpy()  # keeps the strides


def _plain(value: Any) -> bool:
    """JSON gives it back as it was (tuples come back as tuples: ``load_source`` turns lists into tuples)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    return isinstance(value, tuple) and all(isinstance(v, (bool, int, float, str)) for v in value)


def media_info_meta(info: Any) -> dict[str, Any]:
    data = asdict(info)
    data.pop("path", None)
    data["fps"] = str(info.fps)
    return data


def media_info_from_meta(meta: dict[str, Any], path: Path):
    from lipsync.media.probe import MediaInfo

    return MediaInfo(path=str(path), **{**meta, "fps": Fraction(meta["fps"])})


def code_fingerprint() -> str:
    """Hash of the installed package's Python sources: entries made by other code are never read."""
    import lipsync

    h = hashlib.blake2b(digest_size=16)
    root = Path(lipsync.__file__).parent
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def weights_fingerprint(folder: Path | None) -> str:
    """Identity of a weights folder: every file's relative path, size and modification time (None: the random
    weights, which the engine name and config identify)."""
    if folder is None:
        return "none"
    h = hashlib.blake2b(digest_size=16)
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        st = path.stat()
        h.update(f"{path.relative_to(folder)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


@dataclass
class CachedSource:
    info: Any
    """``lipsync.media.probe.MediaInfo`` with this request's path."""
    track: Any
    """``lipsync.media.faces.FaceTrack``."""
    identity: np.ndarray | None


class RequestCache:
    """One request's use of the cache. ``identity`` holds what the worker's entries depend on besides the
    request: ``source`` (face analyzer, identity embedder, code), ``crops`` (engine, weights, crop size) and
    ``encoder`` (dtype, device)."""

    def __init__(self, cache: VideoCache, video_path: Path, params: Any, identity: dict[str, Any],
                 say: Callable[[str], None], digest: str | None = None):
        self.cache, self.identity, self.say = cache, identity, say
        self.report = CacheReport()
        self.video_path = Path(video_path)
        digest = digest or file_digest(video_path)  # known when the upload was hashed as it was stored
        self.source_key = key_of("source", digest, video_side_fields(params), identity["source"])
        self.crops_key: str | None = None
        self._crops: EntryWriter | None = None
        self.memo: EncoderMemo | None = None
        self._memo_key: str | None = None

    # --- probe, face track, identity
    def load_source(self) -> CachedSource | None:
        from lipsync.media.faces import FaceTrack

        entry = self.cache.get("source", self.source_key, self.say)
        if entry is None:
            return None
        track_meta = entry.meta["track"]
        track = FaceTrack(**{**{k: tuple(v) if isinstance(v, list) else v for k, v in track_meta.items()},
                             **{k[len("track."):]: v for k, v in entry.arrays.items() if k.startswith("track.")}})
        self.report.reused += ["probe", "face_track"] + (["face_id"] if "identity" in entry.arrays else [])
        self.report.saved_s += float(entry.meta.get("seconds", 0.0))
        return CachedSource(media_info_from_meta(entry.meta["info"], self.video_path), track,
                            None if "identity" not in entry.arrays else np.array(entry.arrays["identity"]))

    def save_source(self, info: Any, track: Any, identity: np.ndarray | None, seconds: float) -> None:
        import dataclasses

        arrays: dict[str, np.ndarray] = {}
        track_meta: dict[str, Any] = {}
        for f in dataclasses.fields(track):
            value = getattr(track, f.name)
            if isinstance(value, np.ndarray):
                arrays[f"track.{f.name}"] = value
            elif _plain(value):
                track_meta[f.name] = value
            else:  # a field this format cannot give back as it was: keep nothing rather than a changed track
                log.warning("cache: FaceTrack.%s (%s) has no cached form; the face track is not kept", f.name,
                            type(value).__name__)
                return
        if identity is not None:
            arrays["identity"] = np.asarray(identity)
        meta = {"info": media_info_meta(info), "track": track_meta, "seconds": round(seconds, 4)}
        if self.cache.put("source", self.source_key, meta, arrays):
            self.report.filled.append("source")

    # --- crops of the output timeline
    def use_timeline(self, background: np.ndarray, generate: np.ndarray) -> None:
        """Key the crops (and what the encoder makes of them) by the output timeline itself: whatever decided
        it (edits, a sync mode following the audio's length), the same timeline gives the same crops."""
        self.crops_key = key_of("crops", self.source_key, array_digest(background, generate), self.identity["crops"])

    def load_crops(self, num_frames: int) -> np.ndarray | None:
        entry = self.cache.get("crops", self.crops_key, self.say)
        if entry is None:
            return None
        crops = entry.arrays.get("crops")
        if crops is None or len(crops) != num_frames:
            return None
        self.report.reused.append("crops")
        self.report.saved_s += float(entry.meta.get("seconds", 0.0))
        return crops

    def crops_sink(self) -> EntryWriter | None:
        try:
            self._crops = self.cache.writer("crops", self.crops_key)
        except OSError as exc:  # the cache's disk refuses: the request goes on without keeping its crops
            log.warning("cache: could not start a crops entry (%s); not kept", exc)
            return None
        return self._crops

    # --- the engine's image-encoder outputs
    def encoder_memo(self, engine_key: dict[str, Any] | None) -> EncoderMemo | None:
        if engine_key is None:
            return None
        self._memo_key = key_of("encoder", self.crops_key, self.identity["encoder"], engine_key)
        found = self.cache.get("encoder", self._memo_key, self.say)
        if found is not None:
            self.report.saved_s += float(found.meta.get("seconds", 0.0))
        self.memo = EncoderMemo(found, self.report)
        return self.memo

    def finish(self, num_frames: int, crop_seconds: float) -> None:
        """After a successful request: keep the crops and encoder outputs it made."""
        if self._crops is not None:
            if self._crops.rows("crops") == num_frames:
                self._crops.meta = {"seconds": round(crop_seconds, 4)}
                if self._crops.commit():
                    self.report.filled.append("crops")
            self._crops.abort()
            self._crops = None
        memo = self.memo
        if memo is not None and memo.found is not None and memo.report.encoder_reused:
            self.report.reused.append("image_encoder")
        if memo is not None and memo.missed and memo.values:
            seconds = memo.seconds + (float(memo.found.meta.get("seconds", 0.0)) if memo.found else 0.0)
            kept = {**(memo.found.arrays if memo.found else {}), **memo.values}  # another batching's outputs too
            if self.cache.put("encoder", self._memo_key, {"seconds": round(seconds, 4), "orders": memo.orders},
                              {name: kept[name] for name in kept if name in memo.orders}):
                self.report.filled.append("image_encoder")

    def close(self) -> None:
        if self._crops is not None:
            self._crops.abort()
            self._crops = None


# ----------------------------------------------------------------------------------------------- inputs
def fetch_video(cache: VideoCache, url: str, fetch: Callable[[], Any], storage: Any, dest: Path) -> tuple[Any, str]:
    """The ``video`` input through the cache: an upload to this server whose bytes this host has seen (its
    ``StoredObject.digest``, computed once when it was stored) is copied from the cache, with no download and
    no hashing; otherwise it is fetched (``fetch()``: a LocalFile), hashed, and an upload kept for next time.
    Returns (the LocalFile with its digest, ``hit`` | ``filled`` | ``fetched``)."""
    from lipsync.contract.schema import STORAGE_SCHEME
    from lipsync.worker.job import LocalFile

    stored = None
    if url.startswith(STORAGE_SCHEME):
        try:
            stored = storage.stat(url[len(STORAGE_SCHEME):])
        except Exception as exc:  # the store's own error comes again, typed, from the fetch itself
            log.info("cache: could not stat the video upload (%s)", exc)
    if stored is not None and stored.digest:
        entry = cache.get("input", stored.digest)
        if entry is not None and entry.arrays["bytes"].size == stored.size:
            try:
                dest.write_bytes(entry.arrays["bytes"].data)
                return LocalFile(dest, entry.meta["content_type"], digest=stored.digest), "hit"
            except OSError as exc:
                log.warning("cache: could not copy a cached upload (%s); downloading it", exc)
    local = fetch()
    digest = file_digest(local.path)
    if stored is None or stored.digest != digest:  # a URL, or an upload replaced meanwhile: nothing kept by it
        return LocalFile(local.path, local.content_type, digest=digest), "fetched"
    writer = None
    try:
        writer = cache.writer("input", digest)
        with open(local.path, "rb") as f:
            while block := f.read(8 << 20):
                writer.append("bytes", np.frombuffer(block, np.uint8))
        writer.meta = {"content_type": local.content_type}
        kept = writer.commit()
    except OSError as exc:
        log.warning("cache: could not keep the video upload (%s)", exc)
        kept = None
    finally:
        if writer is not None:
            writer.abort()
    return LocalFile(local.path, local.content_type, digest=digest), "filled" if kept else "fetched"
