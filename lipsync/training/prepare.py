"""``lipsync data prepare SRC OUT``: talking-head clips -> WebDataset training shards (``lipsync/training/shards.py``).

Per clip, exactly what serving does before the model (the same ``media`` functions and the pipio engine's own
face rule, so training sees the crops and masks inference will give it): decode at the training fps, dlib face
track, crops and mouth masks at the working size, the clip's own audio at 16 kHz on its frame timeline, and
the track's face-ID embedding. A clip without a usable face, without audio, or that cannot be decoded is
skipped and reported, never fatal.

Layout of OUT::

    OUT/plan.json                       the clips of every shard (fixed on the first run; resumed runs reuse it)
    OUT/train/shard-000000.tar (+ .json report)   finished shards (written to .tmp and renamed when whole)
    OUT/val/shard-000000.tar   (+ .json report)
    OUT/summary.json                    totals and every skipped clip with its reason

The split is by identity (by default each file is one identity; ``--identity parent`` groups by parent folder,
e.g. VoxCeleb's ``id/video/clip.mp4``), decided by a hash of the identity, so a person is never on both sides.
Shards are processed in parallel by worker processes; a shard whose ``.tar`` exists is not redone.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from lipsync.training.shards import ClipSample, write_shard

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = {".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v"}


@dataclass(frozen=True)
class PrepareOptions:
    """``crop_size``: the working size (512 for the base model, 64 for tiny); ``fps``: training frame rate;
    ``max_frames``: frames kept per clip (longer clips are cut, and the summary says so); ``min_coverage``: share
    of frames that must show the face; ``clips_per_shard``; ``val_fraction`` of identities held out;
    ``identity``: ``file`` or ``parent``; ``workers``: processes."""

    crop_size: int = 512
    fps: int = 25
    max_frames: int = 750
    min_coverage: float = 0.5
    min_frames: int = 9
    clips_per_shard: int = 64
    val_fraction: float = 0.05
    identity: str = "file"
    workers: int = max(1, (os.cpu_count() or 2) - 1)
    insightface_root: str | None = None
    """insightface's pack for the face tracker (``LIPSYNC_INSIGHTFACE_ROOT``); None: dlib."""


@dataclass
class ShardReport:
    shard: str
    clips: list[str] = field(default_factory=list)
    frames: int = 0
    skipped: list[dict] = field(default_factory=list)  # {"file", "reason"}
    notes: list[str] = field(default_factory=list)


class ClipSkipped(Exception):
    """A clip that cannot become a training sample (the reason is reported, the run goes on)."""


def find_clips(src: str | Path) -> list[Path]:
    """Video files under a folder (recursively), or the paths listed in a text file (one per line)."""
    src = Path(src)
    if src.is_file() and src.suffix == ".txt":
        return [Path(line.strip()) for line in src.read_text().splitlines() if line.strip()]
    if not src.is_dir():
        raise FileNotFoundError(f"{src} is neither a folder of clips nor a .txt list of clips")
    return sorted(p for p in src.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file())


def identity_of(path: Path, rule: str) -> str:
    if rule == "file":
        return str(path)
    if rule == "parent":
        return str(path.parent)
    raise ValueError(f"identity must be 'file' or 'parent', got {rule!r}")


def split_of(identity: str, val_fraction: float) -> str:
    """``val`` for a stable share ``val_fraction`` of identities (a hash, so adding clips moves nobody)."""
    h = int(hashlib.sha1(identity.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "val" if h < val_fraction else "train"


def plan_shards(clips: list[Path], options: PrepareOptions) -> dict[str, list[list[str]]]:
    by_split: dict[str, list[str]] = {"train": [], "val": []}
    for clip in clips:
        by_split[split_of(identity_of(clip, options.identity), options.val_fraction)].append(str(clip))
    n = options.clips_per_shard
    return {split: [paths[i : i + n] for i in range(0, len(paths), n)] for split, paths in by_split.items()}


def prepare_clip(path: Path, options: PrepareOptions, analyzer=None, embedder=None) -> tuple[ClipSample, list[str]]:
    """One clip -> a sample, or :class:`ClipSkipped` with the reason."""
    from lipsync.contract.errors import LipsyncError
    from lipsync.media.audio import fit_to_timeline, load_audio, to_model_audio
    from lipsync.media.embedding import track_embedding
    from lipsync.media.faces import track_faces
    from lipsync.media.probe import probe_video, resolve_output_spec
    from lipsync.media.video import iter_video_chunks
    from lipsync.model.engine import EngineInfo, landmarks_to_crop
    from lipsync.model.pipio.engine import PipioEngine

    notes = []
    engine = PipioEngine(None, EngineInfo(name="pipio", crop_size=options.crop_size, weights="prepare"), steps=1,
                         guidance_scale=None)  # only its face rule (crop affines, crop, mouth masks) is used
    try:
        info = probe_video(path)
        if info.kind != "video":
            raise ClipSkipped("not a video (a still image)")
        spec = resolve_output_spec(info, frame_rate=options.fps, num_frames=options.max_frames)
        chunks = list(iter_video_chunks(path, spec))
        frames = np.concatenate(chunks)
        if info.duration_s and info.duration_s * options.fps > options.max_frames + 1:
            notes.append(f"{path}: cut to the first {options.max_frames} frames")
        track = track_faces(chunks, analyzer)
        if track.coverage < options.min_coverage or len(frames) < options.min_frames:
            raise ClipSkipped(f"no usable face: face in {100 * track.coverage:.0f}% of {len(frames)} frames "
                              f"(needs {100 * options.min_coverage:.0f}% and {options.min_frames} frames)")
        audio = load_audio(path, max_seconds=len(frames) / options.fps + 1.0)
        audio, _ = fit_to_timeline(audio, len(frames), spec.fps)
        affines = engine.face_affines(track)
        present = track.present & np.isfinite(affines).all(axis=(1, 2))
        crops = engine.crop(frames, affines)
        landmarks = landmarks_to_crop(track.landmarks, np.nan_to_num(affines))
        landmarks[~present] = np.nan
        faceid = track_embedding(iter([frames]), track, embedder)
    except ClipSkipped:
        raise
    except LipsyncError as exc:  # the media library's typed errors: truncated, no audio, unsupported codec ...
        raise ClipSkipped(f"{type(exc).__name__}: {exc}") from exc
    sample = ClipSample(
        key=hashlib.sha1(str(path).encode()).hexdigest()[:16], crops=crops, mouth=engine.model_masks(landmarks),
        landmarks=landmarks.astype(np.float32), present=present, audio=to_model_audio(audio), faceid=faceid,
        meta={"source": str(path), "identity": identity_of(path, options.identity), "fps": float(spec.fps),
              "num_frames": int(len(frames)), "crop_size": options.crop_size, "coverage": round(track.coverage, 4),
              "face_analyzer": track.analyzer, "face_id_embedder": None if embedder is None else embedder.name})
    return sample, notes


def prepare_shard(shard: Path, clips: list[str], options: PrepareOptions) -> ShardReport:
    """Worker process: every clip of one shard, then the shard is written whole (or, if no clip survived, only
    its report, so the run still counts it as done)."""
    from lipsync.media.embedding import FaceEmbedder
    from lipsync.media.faces import default_face_analyzer

    logging.getLogger("lipsync.media").setLevel(logging.WARNING)
    analyzer, embedder = default_face_analyzer(options.insightface_root), FaceEmbedder()
    report = ShardReport(shard=shard.name)
    samples = []
    for clip in clips:
        try:
            sample, notes = prepare_clip(Path(clip), options, analyzer, embedder)
        except ClipSkipped as exc:
            report.skipped.append({"file": clip, "reason": str(exc)})
            continue
        except Exception as exc:  # noqa: BLE001 - an unexpected failure skips the clip, named, never the run
            report.skipped.append({"file": clip, "reason": f"unexpected {type(exc).__name__}: {exc}"})
            continue
        samples.append(sample)
        report.clips.append(clip)
        report.frames += sample.num_frames
        report.notes += notes
    if samples:
        write_shard(shard, samples)
    shard.with_suffix(".json").write_text(json.dumps(asdict(report), indent=1))
    return report


def _is_done(shard: Path) -> bool:
    return shard.with_suffix(".json").is_file() and (shard.is_file() or not json.loads(
        shard.with_suffix(".json").read_text())["clips"])


def prepare(src: str | Path, out: str | Path, options: PrepareOptions, progress: bool = True) -> dict:
    """Prepare every clip of ``src`` into ``out``; returns (and writes) the summary."""
    from tqdm import tqdm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plan_path = out / "plan.json"
    if plan_path.is_file():  # a resumed run keeps the first run's shard assignment
        plan = json.loads(plan_path.read_text())
        if plan["options"] != asdict(options) | {"workers": plan["options"]["workers"]}:
            raise ValueError(f"{out} was prepared with other options {plan['options']}; use a new OUT folder")
    else:
        plan = {"src": str(src), "options": asdict(options), "shards": plan_shards(find_clips(src), options)}
        tmp = plan_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(plan, indent=1))
        tmp.replace(plan_path)
    jobs, done = [], []
    for split, shards in plan["shards"].items():
        (out / split).mkdir(exist_ok=True)
        for i, clips in enumerate(shards):
            shard = out / split / f"shard-{i:06d}.tar"
            (done if _is_done(shard) else jobs).append((shard, clips))
    total = sum(len(c) for _, c in jobs)
    log.info("%d shards to write (%d already done), %d clips", len(jobs), len(done), total)
    bar = tqdm(total=total, unit="clip", desc="prepare", disable=not progress)
    if jobs:
        with ProcessPoolExecutor(max_workers=min(options.workers, len(jobs))) as pool:
            futures = {pool.submit(prepare_shard, shard, clips, options): clips for shard, clips in jobs}
            for future in as_completed(futures):
                future.result()
                bar.update(len(futures[future]))
    bar.close()
    return summarize(out, plan, resumed=len(done))


def summarize(out: Path, plan: dict, resumed: int = 0) -> dict:
    reports = [json.loads(p.read_text()) for split in plan["shards"] for p in sorted((out / split).glob("*.json"))]
    summary = {
        "clips": sum(len(r["clips"]) for r in reports), "frames": sum(r["frames"] for r in reports),
        "shards": {split: len(list((out / split).glob("shard-*.tar"))) for split in plan["shards"]},
        "shards_already_done": resumed,
        "skipped": [s for r in reports for s in r["skipped"]], "notes": [n for r in reports for n in r["notes"]],
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def format_summary(summary: dict) -> str:
    lines = [f"prepared {summary['clips']} clips ({summary['frames']} frames) into {summary['shards']} shards "
             f"({summary['shards_already_done']} shards were already done)"]
    if summary["skipped"]:
        lines.append(f"skipped {len(summary['skipped'])} clips:")
        lines += [f"  {s['file']}: {s['reason']}" for s in summary["skipped"]]
    lines += summary["notes"]
    return "\n".join(lines)
