"""The training shard format: WebDataset tar shards, one sample per clip.

Why WebDataset: a shard is a plain POSIX tar, so it streams sequentially from local disk, HTTP or object
storage (``pipe:aws s3 cp ...``) with no index server, and it can be inspected with ``tar``; the
``webdataset`` library is the well-kept reader/writer of that convention (``<key>.<field>`` members grouped by
key). Each sample (one clip) holds:

- ``crops.mp4``      face crops at the working size, H.264 (CRF 12, yuv444p): the crops of a 16 h set at 512^2
                     would be ~1 TB as raw arrays, ~50x less as video;
- ``masks.npz``      ``mouth`` (T, S, S) uint8 mouth masks (255 = regenerate), ``landmarks`` (T, 68, 2) float32
                     in crop pixels (NaN where no face), ``present`` (T,) bool;
- ``audio.npy``      (N,) float32 16 kHz mono on the clip's frame timeline (frame j is heard at j / fps);
- ``faceid.npy``     (D,) float32 face-ID embedding of the track (absent if none could be computed);
- ``json``           metadata: source file, identity, fps, frames, size, coverage, embedder.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CROP_CRF = 12


@dataclass
class ClipSample:
    """One prepared clip, as written to and read from a shard."""

    key: str
    crops: np.ndarray  # (T, S, S, 3) uint8
    mouth: np.ndarray  # (T, S, S) uint8, 255 = regenerate (converted to [0, 1] per training window)
    landmarks: np.ndarray  # (T, 68, 2) float32 crop pixels
    present: np.ndarray  # (T,) bool
    audio: np.ndarray  # (N,) float32 16 kHz
    faceid: np.ndarray | None
    meta: dict

    @property
    def fps(self) -> float:
        return float(self.meta["fps"])

    @property
    def num_frames(self) -> int:
        return int(self.crops.shape[0])


def encode_crops(crops: np.ndarray, fps: float, crf: int = CROP_CRF) -> bytes:
    """(T, S, S, 3) uint8 -> H.264 MP4 bytes (near-lossless; ``crf`` 0 is lossless). A lossy codec spreads a
    little of the mouth into the pixels around it, which the masked input keeps."""
    import av
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=round(fps * 1000) / 1000 if fps % 1 else int(fps))
        stream.width, stream.height, stream.pix_fmt = crops.shape[2], crops.shape[1], "yuv444p"
        stream.options = {"crf": str(crf), "preset": "veryfast"}
        for frame in crops:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")))
        out.mux(stream.encode())
    return buf.getvalue()


def decode_crops(data: bytes) -> np.ndarray:
    import av

    with av.open(io.BytesIO(data), "r") as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def to_wds(sample: ClipSample, crf: int = CROP_CRF) -> dict:
    """A webdataset ``TarWriter`` record."""
    masks = io.BytesIO()
    mouth = sample.mouth if sample.mouth.dtype == np.uint8 else np.rint(sample.mouth * 255).astype(np.uint8)
    np.savez_compressed(masks, mouth=mouth, landmarks=sample.landmarks,
                        present=sample.present)
    record = {"__key__": sample.key, "crops.mp4": encode_crops(sample.crops, sample.fps, crf),
              "masks.npz": masks.getvalue(), "audio.npy": _npy(sample.audio.astype(np.float32)),
              "json": json.dumps(sample.meta).encode()}
    if sample.faceid is not None:
        record["faceid.npy"] = _npy(sample.faceid.astype(np.float32))
    return record


def from_wds(record: dict) -> ClipSample:
    """Inverse of :func:`to_wds` on a raw (undecoded) webdataset record."""
    masks = np.load(io.BytesIO(record["masks.npz"]))
    faceid = np.load(io.BytesIO(record["faceid.npy"])) if "faceid.npy" in record else None
    return ClipSample(key=record["__key__"], crops=decode_crops(record["crops.mp4"]),
                      mouth=masks["mouth"], landmarks=masks["landmarks"],
                      present=masks["present"], audio=np.load(io.BytesIO(record["audio.npy"])), faceid=faceid,
                      meta=json.loads(record["json"]))


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def write_shard(path: Path, samples: list[ClipSample], crf: int = CROP_CRF) -> None:
    """Write ``samples`` to ``path`` atomically (a ``.tmp`` file renamed when complete), so a shard on disk is
    always whole: a crash leaves no half shard that a resumed run would take as done."""
    import webdataset as wds

    tmp = path.with_suffix(path.suffix + ".tmp")
    with wds.TarWriter(str(tmp)) as sink:
        for sample in samples:
            sink.write(to_wds(sample, crf))
    tmp.replace(path)


def read_shard(url: str) -> list[dict]:
    """Raw records of one shard (local path or any URL webdataset opens, e.g. ``pipe:aws s3 cp s3://... -``)."""
    import webdataset as wds

    # one shard, read whole: the caller (lipsync/training/data.py) already decided which process reads it
    return list(wds.WebDataset(url, shardshuffle=False, empty_check=False, nodesplitter=_all, workersplitter=_all))


def _all(urls):
    return urls


def list_shards(root: str | Path, split: str) -> list[str]:
    """The finished shards of ``split`` (``train`` or ``val``) of a prepared folder, in name order."""
    return sorted(str(p) for p in (Path(root) / split).glob("shard-*.tar"))
