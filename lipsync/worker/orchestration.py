"""The lip-sync pipeline: lipsync/media/ (decode, timeline, faces, audio, paste-back, encode) around one engine.

Loaded once per worker (``load_lipsync_pipeline(settings)``): the engine is detected from the weights folder
(``lipsync.model.weights``; ``LIPSYNC_ENGINE`` overrides) and loaded. Called once per request. The flow, in streaming
passes so that full-size frames are never all in memory at once:

1. probe the input and resolve the output spec (``frame_rate``, ``height``, ``width``, ``num_frames``);
2. pass 1 (streaming decode): face track over the source frames (its length is the exact input length T0);
   no face anywhere → ``NoFaceDetected`` (422 on ``video``); the few frames the face-ID needs are kept as it
   streams by; for an engine whose crop rule is per frame and a request without edits, the crops themselves
   are made here as each track row becomes final (``lipsync.worker.early_crops``) and pass 2 reads them back;
3. the output timeline from the edit fields (additions, removals, bridges) and the face track laid on it;
4. the audio, fitted to the output timeline (padded with silence / cut, logged) and resampled to 16 kHz;
5. the face-ID embedding from those frames, for engines that use one;
6. the engine's crop rule on the output track (frame → crop affines);
7. pass 2: two streaming decodes of the output timeline's background frames run side by side — the first
   (RGB; skipped when pass 1 made the crops) feeds crops to the engine as it asks for them, the second takes
   the engine's generated crops as they come, pastes them back through the engine's blend masks and encodes
   the MP4 with the aligned audio. The second keeps the decoder's 4:2:0 planes (``lipsync.media.yuv``): only the
   mouth's box is converted, and the encoder takes the planes as they are.

Every pass is a bounded pipeline of threads (``lipsync.worker.stages``): decode runs ahead of tracking; in pass 2
decode+crop, the engine, the second decode, paste-back and encode each run in their own thread with a queue
of two chunks between them (after the engine: its own batches of crops, handed over one at a time), so a GPU
engine never waits on a CPU stage that could have been ready, and memory is bounded by the queues (plus whatever
the engine itself holds).

The worker has no engine-specific branch: what differs between models is behind ``lipsync.model.engine``.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from lipsync.queue.records import LogLevel
from lipsync.contract.settings import Settings
from lipsync.model.devices import typed_out_of_memory
from lipsync.model.engine import CropBatch, EngineOptions, EngineRequest, Knobs, LipSyncEngine, landmarks_to_crop
from lipsync.worker.job import OutputFile, PipelineJob, PipelineOutput
from lipsync.worker.stages import Stages
from lipsync.worker.video_cache import VideoCache, code_fingerprint, weights_fingerprint

log = logging.getLogger("lipsync.pipeline")

CHUNK = 16
"""Frames per decoded chunk in every pass, at most (see ``chunk_frames``)."""
CHUNK_BYTES = 32 << 20
"""Full-size frames per chunk are capped to about this many bytes: the stage queues hold a few chunks each,
so this bounds the pipeline's frame memory (1080p: 5 frames a chunk; 720p and below: 16)."""


def chunk_frames(width: int, height: int) -> int:
    return max(2, min(CHUNK, CHUNK_BYTES // (width * height * 3)))
FACE_ID_FRAMES = 4
"""Evenly spaced frames whose face embeddings are averaged into the identity (dlib's ResNet takes about
0.1-0.25 s a frame on one CPU core; four frames of one face average to within noise of eight)."""


def engine_options(settings: Settings) -> EngineOptions:
    from lipsync.model.devices import resolve_device

    device = resolve_device(settings.device)
    return EngineOptions(device=device, dtype=settings.dtype.value,  # "auto": each engine's own preference
                         num_inference_steps=settings.num_inference_steps, guidance_scale=settings.guidance_scale,
                         random_weights_config=settings.random_weights_config, face_crop_size=settings.face_crop_size,
                         compile=settings.compile, text_encoder=settings.text_encoder,
                         deep_cache=settings.deep_cache, offload=settings.offload)


class LipSyncWorkerPipeline:
    """``pipeline(job) -> PipelineOutput`` over a loaded engine and the face models."""

    def __init__(self, settings: Settings):
        from lipsync.worker.allocator import reuse_large_buffers
        from lipsync.media.embedding import FaceEmbedder
        from lipsync.media.faces import default_face_analyzer
        from lipsync.model.weights import load_engine

        started = time.perf_counter()
        reuse_large_buffers()  # frame-sized arrays from the heap, not a fresh mmap (and its page faults) each
        self.settings = settings
        self.options = engine_options(settings)
        self.engine: LipSyncEngine = load_engine(settings.weights_dir, self.options, settings.engine)
        self.info = self.engine.info
        self.analyzer = default_face_analyzer(settings.insightface_root)
        self.embedder = FaceEmbedder() if self.info.needs_identity else None
        self.cache = VideoCache.from_settings(settings)  # the video-side cache (lipsync.worker.video_cache), or None
        self.cache_identity = None if self.cache is None else {
            "source": {"analyzer": self.analyzer.name, "identity": self.info.needs_identity,
                       "code": code_fingerprint()},
            "crops": {"engine": self.info.name, "weights": self.info.weights, "crop_size": self.info.crop_size,
                      "files": weights_fingerprint(settings.weights_dir)},
            "encoder": {"dtype": self.info.dtype or self.options.dtype, "device": self.options.device}}
        log.info("lip-sync pipeline: engine %s (weights %s) on %s/%s, face crops %d px, faces %s; loaded in %.1f s",
                 self.info.name, self.info.weights, self.options.device, self.info.dtype or self.options.dtype, self.info.crop_size,
                 self.analyzer.name, time.perf_counter() - started)

    # ------------------------------------------------------------------------------------------------------
    def __call__(self, job: PipelineJob) -> PipelineOutput:
        with contextlib.ExitStack() as cleanup:
            return self._run(job, cleanup)

    def _run(self, job: PipelineJob, cleanup: contextlib.ExitStack) -> PipelineOutput:
        from lipsync.media.audio import fit_to_timeline, load_audio, to_model_audio
        from lipsync.media.faces import FaceTracker, track_on_timeline
        from lipsync.media.probe import expected_frame_count, probe_video, resolve_output_spec
        from lipsync.media.sync_modes import (AUDIO_LENGTH_MODES, fit_sync_mode, frames_to_read, iter_in_order,
                                              output_frames_for_audio)
        from lipsync.media.timeline import plan_from_request, requests_edits
        from lipsync.media.video import i420_colour, iter_video_chunks, iter_video_i420_chunks, rebatch

        req = job.params
        video_path, audio_path = job.inputs["video"].path, job.inputs["audio"].path
        timings: dict[str, float] = {}
        clock = _Clock(timings)
        started = time.perf_counter()
        vcache = self._request_cache(job, clock)
        if vcache is not None:
            cleanup.callback(vcache.close)
        cached = None if vcache is None else vcache.load_source()  # probe, face track, identity of this video
        if self.info.random_weights_warning:
            job.log(self.info.random_weights_warning, LogLevel.WARN)

        # 1. Probe + output spec
        with clock("probe_time"):
            info = probe_video(video_path) if cached is None else cached.info
            spec = resolve_output_spec(info, frame_rate=req.frame_rate, height=req.height, width=req.width,
                                       num_frames=frames_to_read(req, is_image=info.kind == "image",
                                                                 max_num_frames=self.settings.max_num_frames))
        is_image = info.kind == "image"
        for name, requested, got in (("height", req.height, spec.height), ("width", req.width, spec.width)):
            if requested > 0 and requested != got:
                job.log(f"{name} {requested} rounded to {got} (H.264 needs even sizes)", LogLevel.INFO)
        job.log(f"Input: {info.kind} {info.width}x{info.height} at {float(info.fps):g} fps; output {spec.width}x"
                f"{spec.height} at {float(spec.fps):g} fps, up to {spec.num_frames} frames", LogLevel.INFO)

        # 2. Pass 1: decode + face track (the exact T0 is what the decode yields)
        speaker_metrics: dict[str, Any] = {"mode": str(req.speaker), "note": "face track from the video cache"}
        expected = expected_frame_count(info, spec)
        job.log(f"Decoding {info.kind} and tracking faces: about {expected} frames", LogLevel.INFO)
        chunk = chunk_frames(spec.width, spec.height)
        sampler = None
        if self.embedder is not None and cached is None:
            from lipsync.media.embedding import FrameSampler

            sampler = FrameSampler(expected, count=1 if is_image else FACE_ID_FRAMES)
        early = None  # crops made in this pass (see lipsync.worker.early_crops), when the engine's rule allows it
        if (self.info.affines_per_frame and not is_image and not requests_edits(req)
                and req.speaker in ("largest", "auto") and cached is None):
            from lipsync.worker.early_crops import EarlyCrops

            early = EarlyCrops(self.engine, job.workdir, self.analyzer.name)
            cleanup.callback(early.close)
        if cached is not None:  # the video-side cache had this video's face track
            track = cached.track
            job.log(f"Face coverage {100 * track.coverage:.1f}% ({int(track.present.sum())} of {track.num_frames} "
                    f"frames) from the video cache: no decode or face tracking", LogLevel.INFO)
        else:
            with clock("face_track_time"), Stages(threaded=self.settings.stage_threads) as stages:
                chunks = stages.run(iter_video_chunks(video_path, spec, chunk_size=chunk), name="decode")
                if sampler is not None:
                    chunks = sampler.tap(chunks)
                tracker = FaceTracker(self.analyzer, on_rows=None if early is None else
                                      lambda rows: _timed_call(clock, "crop_time", early.crop_rows, rows)) \
                    if req.speaker in ("largest", "auto") else self._speaker_tracker(req, info, spec, video_path)
                for frames in _progress_chunks(job, chunks, "decoding + face tracking, frame", expected):
                    if early is not None:
                        early.hold(frames)
                    tracker.push(frames)
                track = tracker.finish()
                if req.speaker == "auto" and tracker.max_faces > 1 and info.has_audio:  # track them all, then choose
                    track, tracker, early = self._retrack_speakers(req, info, spec, video_path, chunk, stages, early)
                if req.speaker != "largest":  # lipsync.media.speakers: the chosen face(s), and why
                    from lipsync.media.speakers import one_face_selection

                    selection = getattr(tracker, "selection", None) or \
                        one_face_selection(track, faces=tracker.max_faces, has_audio=info.has_audio)
                    job.log(selection.describe(), LogLevel.INFO)
                    speaker_metrics = selection.metrics()
                job.log(f"Face coverage {100 * track.coverage:.1f}% ({int(track.present.sum())} of {track.num_frames} "
                        f"frames; {int(track.detected.sum())} detected) with {track.analyzer}", LogLevel.INFO)
                track.require_face("video")
        source_frames = track.num_frames

        # 3. Timeline from the edits and the sync mode (lipsync.media.sync_modes), face track on it
        audio_in = None
        if req.sync_mode in AUDIO_LENGTH_MODES:  # the output's length follows the audio: read it first
            with clock("audio_time"):
                audio_in = load_audio(audio_path, max_seconds=(self.settings.max_num_frames + 1) / float(spec.fps))
            job.log(f"sync_mode {req.sync_mode}: the output follows the {audio_in.duration_s:.3f} s audio",
                    LogLevel.INFO)
        timeline = fit_sync_mode(plan_from_request(source_frames, req), req.sync_mode, None if audio_in is None else
                                 output_frames_for_audio(audio_in.duration_s, spec.fps,
                                                         self.settings.max_num_frames, req.sync_mode))
        out_track = track_on_timeline(track, timeline)
        num_out = timeline.num_frames
        generate = timeline.source_indices() < 0
        if timeline.spans or timeline.removed:
            job.log(f"Timeline: {source_frames} input frames, +{sum(s.length for s in timeline.spans)} generated "
                    f"({len(timeline.spans)} spans), -{timeline.removed} removed -> {num_out} output frames",
                    LogLevel.INFO)

        # 4. Audio on the output timeline
        with clock("audio_time"):
            audio = audio_in or load_audio(audio_path, max_seconds=num_out / float(spec.fps) + 1.0)
            audio, fit = fit_to_timeline(audio, num_out, spec.fps)
            wav16k = to_model_audio(audio)
        job.log({"padded": f"Audio is {fit.source_s:.3f} s, shorter than the {fit.target_s:.3f} s video: padded "
                           "with silence",
                 "cut": f"Audio is {fit.source_s:.3f} s, longer than the {fit.target_s:.3f} s video: cut",
                 "exact": f"Audio is {fit.source_s:.3f} s, exactly the video's length"}[fit.action], LogLevel.INFO)

        metrics: dict[str, Any] = {
            "frames": num_out, "source_frames": source_frames, "generated_frames": int(generate.sum()),
            "removed_frames": timeline.removed, "fps": float(spec.fps), "width": spec.width, "height": spec.height,
            "face_coverage": round(track.coverage, 4),
            "output_face_coverage": round(out_track.coverage, 4), "audio_fit": fit.action,
            "engine": self.info.name, "model": self.info.weights,
            "random_weights": self.info.random_weights_warning is not None, "crop_size": self.info.crop_size,
        }
        if req.speaker != "largest":
            metrics["speaker"] = speaker_metrics
        if req.sync_mode != "cut_off":
            metrics["sync_mode"] = req.sync_mode
            job.log(f"sync_mode {req.sync_mode}: {timeline.num_frames} output frames from a clip of "
                    f"{plan_from_request(source_frames, req).num_frames}", LogLevel.INFO)
        background = timeline.background_indices()
        colour = i420_colour(video_path, spec)

        def frames(i420: bool = False) -> Iterator[np.ndarray]:  # a fresh streaming decode of the output timeline
            from lipsync.media.video import iter_reindexed

            decoded = (iter_video_i420_chunks(video_path, spec, colour, chunk_size=chunk) if i420
                       else iter_video_chunks(video_path, spec, chunk_size=chunk))
            if np.any(np.diff(background) < 0):  # loop / bounce: source frames out of order
                return iter_in_order(decoded, background, chunk_size=chunk, workdir=job.workdir)
            return iter_reindexed(decoded, background, chunk_size=chunk)

        out_path = job.workdir / "output.mp4"
        if not out_track.present.any():
            job.log("No output frame shows a face (every face frame was removed): the video is re-encoded with the "
                    "new audio, unchanged", LogLevel.WARN)
            with clock("paste_encode_time"), Stages(threaded=self.settings.stage_threads) as stages:
                _encode(job, stages.run(frames(i420=True), name="decode"), audio, spec, colour, num_out,
                        nvenc=self.settings.nvenc)
            return _output(out_path, metrics, timings)

        # 5. Face-ID embedding, for engines that condition on one
        identity = None if cached is None else cached.identity
        if self.embedder is not None and sampler is not None:
            from lipsync.media.embedding import track_embedding

            with clock("face_id_time"):
                identity = sampler.embedding(track, self.embedder)
                if identity is None:  # none of the kept frames shows the face: decode the ones that do
                    identity = track_embedding(iter_video_chunks(video_path, spec, chunk_size=chunk), track,
                                               self.embedder, count=1 if is_image else FACE_ID_FRAMES)

        if vcache is not None and cached is None:
            vcache.save_source(info, track, identity, sum(timings.get(k, 0.0) for k in
                                                          ("probe_time", "face_track_time", "face_id_time")))

        # 6. The engine's crop rule
        affines = self.engine.face_affines(out_track)
        present = np.isfinite(affines).all(axis=(1, 2))
        if not self.info.whole_frame:  # a whole-frame engine generates every frame: each is pasted, face or not
            present &= out_track.present
        crop_landmarks = landmarks_to_crop(out_track.landmarks, np.nan_to_num(affines))
        crop_landmarks[~present] = np.nan

        # 7. Pass 2: crops into the engine, generated crops out, pasted and encoded as they come
        request = EngineRequest(
            audio=wav16k, fps=float(spec.fps), num_frames=num_out, generate=generate, is_image=is_image,
            knobs=Knobs.from_request(req), log=lambda m: job.log(m, LogLevel.INFO), progress=job.progress,
            identity=identity, workdir=job.workdir)
        cached_crops = crop_sink = None
        if vcache is not None:
            vcache.use_timeline(background, generate)
            reusable = not is_image and self.info.crops_reusable
            cached_crops = vcache.load_crops(num_out) if reusable else None
            crop_sink = vcache.crops_sink() if cached_crops is None and reusable else None
            declares = getattr(self.engine, "encoder_cache_key", None)  # an engine without it reuses no encoder output
            request.encoded = vcache.encoder_memo(None if declares is None else declares(request))
        if early is not None and (timeline.spans or timeline.removed or len(early.store) != num_out
                                  or np.any(background != np.arange(num_out))):
            early.close()  # the timeline is not the source's after all
            early = None
        with clock("pass2_time"), Stages(threaded=self.settings.stage_threads) as stages:
            request.progress = stages.guard(job.progress)  # a timeout stops the engine at its next step
            if cached_crops is not None:  # from the video-side cache
                decoded = (cached_crops[a : a + chunk] for a in range(0, num_out, chunk))
                batches = stages.run(self._crop_batches(job, decoded, affines, present, crop_landmarks, num_out,
                                                        clock, still=False, cropped=True), name="crop")
            elif early is not None:
                decoded = early.batches(chunk)
                batches = stages.run(self._crop_batches(job, decoded, affines, present, crop_landmarks, num_out,
                                                        clock, still=False, cropped=True, sink=crop_sink), name="crop")
            else:
                decoded = stages.run(frames(), name="decode_crop")
                batches = stages.run(self._crop_batches(job, decoded, affines, present, crop_landmarks, num_out,
                                                        clock, still=is_image, sink=crop_sink), name="crop")
            waited = _timed(batches, clock, "model_wait_time")  # the engine waiting for crops is not model time
            engine_chunks = typed_out_of_memory(self.engine.generate(request, waited), what=self.info.name)
            marks: dict[str, float] = {}  # when the engine gave its first and its last crops
            # The engine's own batches are handed over whole (re-cut to chunks on the paste side): an engine that
            # gives a large batch at once (MuseTalk: a UNet batch of frame_block_width frames) makes the next one
            # while that one is pasted and encoded, instead of waiting until all but two chunks of it are; it
            # starts a batch once the last was taken, so two are alive (one pasted, one made), as with any overlap.
            generated = rebatch(stages.run(_marked(_timed(engine_chunks, clock, "model_time"), marks),
                                           name="model", queue_size=1, handoff=True), chunk)
            background_frames = stages.run(frames(i420=True), name="decode_paste")
            pasted = stages.run(self._pasted(job, background_frames, generated, request, affines,
                                             present, crop_landmarks, colour, clock), name="paste")
            _encode(job, pasted, audio, spec, colour, num_out, clock, nvenc=self.settings.nvenc)
        ended = time.perf_counter()
        if marks:  # the output phase not overlapped with the engine: pasting and encoding its last crops
            timings["model_first_out_time"] = marks["first"] - started
            timings["output_tail_time"] = ended - marks["last"]
        timings.update({f"cpu_{name}_time": cpu for name, cpu in stages.cpu_s.items()})
        metrics.update(request.metrics)
        if vcache is not None:
            vcache.finish(num_out, timings.get("crop_time", 0.0) + stages.cpu_s.get("decode_crop", 0.0))
            metrics.update(vcache.report.metrics())
        timings["model_time"] = max(0.0, timings.get("model_time", 0.0) - timings.pop("model_wait_time", 0.0))
        timings["paste_encode_time"] = timings.get("paste_time", 0.0) + timings.get("encode_time", 0.0)
        return _output(out_path, metrics, timings)

    # ------------------------------------------------------------------------------------------------------
    def _request_cache(self, job: PipelineJob, clock: "_Clock"):
        """This request's use of the video-side cache (``lipsync.worker.video_cache.RequestCache``), or None: off
        on this worker, or skipped by the request (``skip_video_cache``)."""
        from lipsync.worker.video_cache import RequestCache

        if self.cache is None:
            return None
        if getattr(job.params, "skip_video_cache", False):
            job.log("Video cache: skipped for this request (skip_video_cache)", LogLevel.INFO)
            return None
        with clock("cache_key_time"):  # hashing the video's bytes
            return RequestCache(self.cache, job.inputs["video"].path, job.params, self.cache_identity,
                                say=lambda message: job.log(message, LogLevel.WARN), digest=job.inputs["video"].digest)

    def _speaker_tracker(self, req, info, spec, video_path: Path):
        """Pass 1's tracker for a ``speaker`` other than the largest face (``lipsync.media.speakers``)."""
        from lipsync.media.speakers import SpeakerTracker, source_audio_loader

        seconds = self.settings.max_num_frames / float(spec.fps) + 1.0
        return SpeakerTracker(self.analyzer, req.speaker, scale=(spec.width / info.width, spec.height / info.height),
                              fps=spec.fps, embed=None if self.embedder is None else self.embedder.embed,
                              source_audio=(lambda: None) if info.kind == "image" else
                              source_audio_loader(video_path, max_seconds=seconds))

    def _retrack_speakers(self, req, info, spec, video_path: Path, chunk: int, stages: Stages, early):
        """``speaker: "auto"`` when pass 1 saw several faces in a frame: a second decode tracks them all and
        chooses (the crops pass 1 made for the largest face are dropped). Returns (track, tracker, early)."""
        from lipsync.media.video import iter_video_chunks

        if early is not None:
            early.close()
        tracker = self._speaker_tracker(req, info, spec, video_path)
        for frames in stages.run(iter_video_chunks(video_path, spec, chunk_size=chunk), name="decode_speakers"):
            tracker.push(frames)
        return tracker.finish(), tracker, None

    def _crop_batches(self, job: PipelineJob, chunks, affines, present, landmarks, num_out: int, clock, *,
                      still: bool, cropped: bool = False, sink=None):
        """CropBatch per decoded chunk (``cropped``: per chunk of crops made in pass 1). A still image is
        cropped once and that crop seen T times (a read-only view): every frame of a still is the same picture
        with the same face. ``sink``: an entry of the video-side cache that keeps the crops."""
        j = 0
        still_crop = None
        for frames in chunks:
            with clock("crop_time"):
                n = len(frames)
                sl = slice(j, j + n)
                if cropped:
                    crops = frames
                elif still:
                    if still_crop is None:
                        still_crop = self.engine.crop(frames[:1], affines[sl][:1])[0]
                    crops = np.broadcast_to(still_crop, (n, *still_crop.shape))
                else:
                    crops = self.engine.crop(frames, np.where(present[sl, None, None], affines[sl], np.nan))
                batch = CropBatch(start=j, crops=crops, present=present[sl], landmarks=landmarks[sl])
                if sink is not None:
                    sink.append("crops", crops)
            j += n
            job.progress("cropping faces, frame", j, num_out)
            yield batch

    def _pasted(self, job: PipelineJob, chunks, generated, request, affines, present, landmarks, colour, clock):
        """Each I420 chunk with the engine's crops pasted in (in place when the decode buffer is writable)."""
        from lipsync.media.paste import paste_face_i420

        j = 0
        for frames in chunks:
            crops = next(generated, None)
            n = len(frames)
            if crops is None or len(crops) != n:
                raise RuntimeError(f"engine {self.info.name} returned {0 if crops is None else len(crops)} crops for "
                                   f"output frames {j}..{j + n - 1}")
            with clock("paste_time"):
                sl = slice(j, j + n)
                masks = self.engine.blend_masks(request, j, landmarks[sl])
                out = frames if frames.flags.writeable else np.array(frames, copy=True)  # a fresh decode buffer
                for k in np.flatnonzero(present[sl]):
                    paste_face_i420(out[k], crops[k], affines[j + k], masks[k], colour,
                                    colour_match=self.settings.paste_colour_match,
                                    antialias=self.settings.paste_antialias,
                                    restore_warp=self.engine.info.restore_warp)
            j += n
            yield out
        if next(generated, None) is not None:
            raise RuntimeError(f"engine {self.info.name} returned more crops than the {j} output frames")


def _encode(job: PipelineJob, chunks, audio, spec, colour, num_out: int, clock: "_Clock | None" = None, *,
            nvenc: bool = True) -> None:
    """Write the I420 frames (pasted, or the background frames unchanged) to MP4 with the aligned audio."""
    from lipsync.media.writer import Mp4Writer

    out_path = job.workdir / "output.mp4"
    j = 0
    with Mp4Writer(out_path, fps=spec.fps, width=spec.width, height=spec.height, audio=audio,
                   colour=colour, nvenc=nvenc) as writer:
        for frames in chunks:
            if j == 0:
                job.log(f"Encoding {num_out} frames with {writer.encoder_name}", LogLevel.INFO)
            if clock is None:
                writer.write_i420(frames)
            else:
                with clock("encode_time"):
                    writer.write_i420(frames)
            j += len(frames)
            job.progress("encoding frame", j, num_out)
    written = writer.result
    if written is None or written.num_frames != num_out:
        raise RuntimeError(f"wrote {None if written is None else written.num_frames} frames, expected {num_out}")


def _output(path: Path, metrics: dict[str, Any], timings: dict[str, float]) -> PipelineOutput:
    metrics.update({k: round(v, 3) for k, v in timings.items()})
    return PipelineOutput(files={"video": OutputFile(path, "video/mp4", "output.mp4")}, metrics=metrics)


def _progress_chunks(job: PipelineJob, chunks, stage: str, expected: int):
    done = 0
    for chunk in chunks:
        done += len(chunk)
        job.progress(stage, done, max(expected, done))
        yield chunk


def _timed_call(clock: "_Clock", name: str, fn, *args):
    with clock(name):
        return fn(*args)


def _marked(items, marks: dict[str, float]):
    """Yield from ``items``, noting when the first (``marks["first"]``) and the last (``"last"``) came."""
    for item in items:
        marks.setdefault("first", time.perf_counter())
        marks["last"] = time.perf_counter()
        yield item


def _timed(items, clock: "_Clock", name: str):
    """Yield from ``items``, adding the time spent producing each item to ``name`` (it includes the time the
    producer spends pulling its own inputs; the caller subtracts what it measured separately)."""
    it = iter(items)
    while True:
        with clock(name):
            item = next(it, None)
        if item is None:
            return
        yield item


class _Clock:
    """``with clock("name"):`` adds the block's wall time (seconds) to ``timings[name]``; re-entrant per name."""

    def __init__(self, timings: dict[str, float]):
        self.timings = timings

    def __call__(self, name: str) -> "_Timer":
        return _Timer(self.timings, name)


class _Timer:
    def __init__(self, timings: dict[str, float], name: str):
        self.timings, self.name = timings, name

    def __enter__(self) -> None:
        self._t0 = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.timings[self.name] = self.timings.get(self.name, 0.0) + time.perf_counter() - self._t0


def load_lipsync_pipeline(settings: Settings) -> LipSyncWorkerPipeline:
    """The worker's factory (``LIPSYNC_PIPELINE=lipsync``): loads the engine and the face models once."""
    return LipSyncWorkerPipeline(settings)
