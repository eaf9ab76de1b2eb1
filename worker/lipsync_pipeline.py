"""The lip-sync pipeline: media/ (decode, timeline, faces, crops, masks, paste, encode) joined with model/.

Loaded once per worker (``load_lipsync_pipeline(settings)``), called once per request. The flow, in passes over
the input so that full-size frames are never all in memory at once:

1. probe the input and resolve the output spec (``frame_rate``, ``height``, ``width``, ``num_frames``);
2. pass 1 (streaming decode): face track over the source frames (its length is the exact input length T0);
   no face anywhere → ``NoFaceDetected`` (422 on ``video``);
3. the output timeline from the edit fields (additions, removals, bridges) and the face track laid on it;
4. the audio, fitted to the output timeline (padded with silence / cut, logged) and resampled to 16 kHz;
5. the face-ID embedding (a decode that stops after the last frame it needs);
6. pass 2 (streaming decode of the output timeline's background frames): face crops at the model's working
   size and mouth masks (whole-frame ``generate`` for additions, bridges and image input);
7. the model, every schema knob wired through, its callback forwarding to ``job.progress`` (cancel works
   between denoising blocks and steps);
8. pass 3 (streaming decode again): paste the generated crops back and encode the MP4 with the aligned audio.

What grows with the output length T is only what the model itself takes at once: the crops, masks and
generated crops at the working size (T x S x S), never the full-size frames.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from contract.jobs import LogLevel
from contract.settings import Settings
from worker.pipeline import OutputFile, PipelineJob, PipelineOutput

log = logging.getLogger("lipsync.pipeline")

RANDOM_WEIGHTS_WARNING = (
    "NOT A TRAINED MODEL: this worker runs the {config!r} model config with RANDOM weights ({why}); the output "
    "video is not a trained model's lip-sync. Set LIPSYNC_WEIGHTS_DIR to a weights folder for real results."
)
CHUNK = 16
"""Frames per decoded chunk in every pass."""
REFERENCE_POOL = 8
"""Candidate appearance-reference crops handed to the model (it picks min(strength, max_reference_frames))."""


def _resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def _resolve_dtype(name: str, device: str):
    import torch

    table = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
             "fp32": torch.float32, "float32": torch.float32}
    if name == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    if name not in table:
        raise ValueError(f"unknown dtype {name!r}: use auto, bf16, fp16 or fp32")
    return table[name]


class LipSyncWorkerPipeline:
    """``pipeline(job) -> PipelineOutput`` over a loaded ``LipSyncPipeline`` and the face models."""

    def __init__(self, settings: Settings):
        from media.embedding import FaceEmbedder
        from media.faces import default_face_analyzer
        from model.pipeline_lipsync import LipSyncPipeline

        self.settings = settings
        self.device = _resolve_device(settings.device)
        self.dtype = _resolve_dtype(settings.dtype, self.device)
        started = time.perf_counter()
        weights = settings.weights_dir
        self.random_weights_warning: str | None = None
        if weights is not None and Path(weights).is_dir() and any(Path(weights).iterdir()):
            self.model = LipSyncPipeline.from_pretrained(weights, device=self.device, dtype=self.dtype)
            self.model_name = "pretrained"  # (the folder is logged here, not put into users' metrics)
            log.info("lip-sync model weights from %s", weights)
            default_crop = 512
        else:
            if weights is not None and not Path(weights).exists():
                raise FileNotFoundError(f"LIPSYNC_WEIGHTS_DIR={weights} does not exist")
            why = "LIPSYNC_WEIGHTS_DIR is not set" if weights is None else f"LIPSYNC_WEIGHTS_DIR={weights} is empty"
            config = settings.random_weights_config
            self.model = LipSyncPipeline.from_config(config, init_seed=0, device=self.device, dtype=self.dtype)
            self.model_name = f"random:{config}"
            self.random_weights_warning = RANDOM_WEIGHTS_WARNING.format(config=config, why=why)
            default_crop = 64 if config == "tiny" else 512
            log.warning(self.random_weights_warning)
        self.crop_size = settings.face_crop_size or default_crop
        multiple = self.model.config.vae_spatial_multiple
        if self.crop_size % multiple:
            raise ValueError(f"face_crop_size {self.crop_size} must be a multiple of {multiple}")
        self.analyzer = default_face_analyzer()
        self.embedder = FaceEmbedder()
        log.info("lip-sync pipeline: model %s on %s/%s, face crops %d px, faces %s; loaded in %.1f s",
                 self.model_name, self.device, str(self.dtype).replace("torch.", ""), self.crop_size,
                 self.analyzer.name, time.perf_counter() - started)

    # ------------------------------------------------------------------------------------------------------
    def __call__(self, job: PipelineJob) -> PipelineOutput:
        from media.audio import fit_to_timeline, load_audio, to_model_audio
        from media.faces import track_faces, track_on_timeline
        from media.probe import expected_frame_count, probe_video, resolve_output_spec
        from media.timeline import plan_from_request
        from media.video import iter_video_chunks

        req = job.params
        video_path, audio_path = job.inputs["video"].path, job.inputs["audio"].path
        timings: dict[str, float] = {}
        clock = _Clock(timings)
        if self.random_weights_warning:
            job.log(self.random_weights_warning, LogLevel.WARN)

        # 1. Probe + output spec
        with clock("probe_time"):
            info = probe_video(video_path)
            spec = resolve_output_spec(info, frame_rate=req.frame_rate, height=req.height, width=req.width,
                                       num_frames=req.num_frames)
        is_image = info.kind == "image"
        for name, requested, got in (("height", req.height, spec.height), ("width", req.width, spec.width)):
            if requested > 0 and requested != got:
                job.log(f"{name} {requested} rounded to {got} (H.264 needs even sizes)", LogLevel.INFO)
        job.log(f"Input: {info.kind} {info.width}x{info.height} at {float(info.fps):g} fps; output {spec.width}x"
                f"{spec.height} at {float(spec.fps):g} fps, up to {spec.num_frames} frames", LogLevel.INFO)

        # 2. Pass 1: decode + face track (the exact T0 is what the decode yields)
        expected = expected_frame_count(info, spec)
        job.log(f"Decoding {info.kind} and tracking faces: about {expected} frames", LogLevel.INFO)
        with clock("face_track_time"):
            track = track_faces(self._progress_chunks(job, iter_video_chunks(video_path, spec, chunk_size=CHUNK),
                                                      "decoding + face tracking, frame", expected), self.analyzer)
            job.log(f"Face coverage {100 * track.coverage:.1f}% ({int(track.present.sum())} of {track.num_frames} "
                    f"frames; {int(track.detected.sum())} detected) with {track.analyzer}", LogLevel.INFO)
            track.require_face("video")
        source_frames = track.num_frames

        # 3. Timeline from the edits, face track on it
        timeline = plan_from_request(source_frames, req)
        out_track = track_on_timeline(track, timeline)
        num_out = timeline.num_frames
        generate = timeline.source_indices() < 0
        if is_image:
            generate[:] = True  # a still is animated: every frame synthesised, the image is the reference
        if timeline.spans or timeline.removed:
            job.log(f"Timeline: {source_frames} input frames, +{sum(s.length for s in timeline.spans)} generated "
                    f"({len(timeline.spans)} spans), -{timeline.removed} removed -> {num_out} output frames",
                    LogLevel.INFO)

        # 4. Audio on the output timeline
        with clock("audio_time"):
            audio = load_audio(audio_path, max_seconds=num_out / float(spec.fps) + 1.0)
            audio, fit = fit_to_timeline(audio, num_out, spec.fps)
            wav16k = to_model_audio(audio, self.model.config.audio_sample_rate)
        job.log({"padded": f"Audio is {fit.source_s:.3f} s, shorter than the {fit.target_s:.3f} s video: padded "
                           "with silence",
                 "cut": f"Audio is {fit.source_s:.3f} s, longer than the {fit.target_s:.3f} s video: cut",
                 "exact": f"Audio is {fit.source_s:.3f} s, exactly the video's length"}[fit.action], LogLevel.INFO)

        metrics: dict[str, Any] = {
            "frames": num_out, "source_frames": source_frames, "generated_frames": int(generate.sum()),
            "removed_frames": timeline.removed, "fps": float(spec.fps), "width": spec.width, "height": spec.height,
            "face_coverage": round(track.coverage, 4),
            "output_face_coverage": round(out_track.coverage, 4), "audio_fit": fit.action,
            "model": self.model_name, "random_weights": self.random_weights_warning is not None,
            "crop_size": self.crop_size,
        }

        out_path = job.workdir / "output.mp4"
        if not out_track.present.any():
            job.log("No output frame shows a face (every face frame was removed): the video is re-encoded with the "
                    "new audio, unchanged", LogLevel.WARN)
            with clock("paste_encode_time"):
                self._encode(job, video_path, spec, timeline, out_track, None, None, generate, audio, out_path)
            return self._output(out_path, metrics, timings)

        # 5. Face-ID embedding
        with clock("face_id_time"):
            face_id = self._face_id(video_path, spec, track, count=1 if is_image else 8)

        # 6. Pass 2: crops + masks on the output timeline
        with clock("crop_time"):
            crops, masks = self._crops(job, video_path, spec, timeline, out_track, is_image)
            references = self._references(crops, out_track, generate, is_image)

        # 7. The model
        with clock("model_time"):
            result = self._run_model(job, req, crops, masks, generate, wav16k, spec, face_id, references)
        for note in result.notes:
            job.log(f"Model: {note}", LogLevel.INFO)
        metrics.update(face_id_cond_strength=result.face_id_cond_strength, num_frame_blocks=result.num_frame_blocks,
                       vae_overlap_window_width=result.vae_overlap_window_width)
        del crops

        # 8. Pass 3: paste back + encode with the aligned audio
        with clock("paste_encode_time"):
            self._encode(job, video_path, spec, timeline, out_track, result.frames, masks, generate, audio, out_path)
        return self._output(out_path, metrics, timings)

    # ------------------------------------------------------------------------------------------------------
    @staticmethod
    def _output(path: Path, metrics: dict[str, Any], timings: dict[str, float]) -> PipelineOutput:
        metrics.update({k: round(v, 3) for k, v in timings.items()})
        return PipelineOutput(files={"video": OutputFile(path, "video/mp4", "output.mp4")}, metrics=metrics)

    @staticmethod
    def _progress_chunks(job: PipelineJob, chunks, stage: str, expected: int):
        done = 0
        for chunk in chunks:
            done += len(chunk)
            job.progress(stage, done, max(expected, done))
            yield chunk

    def _face_id(self, video_path: Path, spec, track, count: int) -> np.ndarray | None:
        from media.embedding import track_embedding
        from media.video import iter_video_chunks

        embedding = track_embedding(iter_video_chunks(video_path, spec, chunk_size=CHUNK), track, self.embedder,
                                    count=count)
        want = self.model.transformer.config.id_embed_dim
        if embedding is not None and embedding.shape != (want,):
            log.warning("face-ID embedding has %d dims, the model wants %d: identity conditioning off",
                        embedding.shape[0], want)
            return None
        return embedding

    def _crops(self, job: PipelineJob, video_path: Path, spec, timeline, out_track, is_image: bool):
        """(T, S, S, 3) uint8 face crops of the output timeline's background frames, (T, S, S) mouth masks."""
        from media.crop import crop_faces
        from media.masks import mouth_masks
        from media.video import iter_reindexed, iter_video_chunks

        size, num_out = self.crop_size, timeline.num_frames
        if is_image:  # one still: one crop, seen T times (a read-only view, no T copies)
            first = next(iter_video_chunks(video_path, spec, chunk_size=1))
            crop, _ = crop_faces(first, out_track, [0], size)
            job.progress("cropping faces, frame", num_out, num_out)
            return (np.broadcast_to(crop[0], (num_out, size, size, 3)),
                    np.broadcast_to(np.zeros((size, size), np.float32), (num_out, size, size)))
        crops = np.zeros((num_out, size, size, 3), np.uint8)
        masks = np.zeros((num_out, size, size), np.float32)
        j = 0
        for frames in iter_reindexed(iter_video_chunks(video_path, spec, chunk_size=CHUNK),
                                     timeline.background_indices(), chunk_size=CHUNK):
            idx = list(range(j, j + len(frames)))
            crops[j : j + len(frames)], _ = crop_faces(frames, out_track, idx, size)
            masks[j : j + len(frames)] = mouth_masks(out_track, idx, size)
            j += len(frames)
            job.progress("cropping faces, frame", j, num_out)
        return crops, masks

    def _references(self, crops: np.ndarray, out_track, generate: np.ndarray, is_image: bool) -> np.ndarray:
        """Appearance references: evenly spaced crops of real (not generated) face frames; the still for an
        image; crops of the held frames behind generated ones if nothing else shows the face."""
        if is_image:
            return np.ascontiguousarray(crops[:1])
        pool = np.flatnonzero(out_track.present & ~generate)
        if pool.size == 0:
            pool = np.flatnonzero(out_track.present)
        picks = pool[np.linspace(0, pool.size - 1, min(REFERENCE_POOL, pool.size)).round().astype(int)]
        return crops[np.unique(picks)]

    def _run_model(self, job: PipelineJob, req, crops, masks, generate, wav16k, spec, face_id, references):
        steps = self.settings.num_inference_steps or self.model.config.num_inference_steps
        state = {"step": 0}

        def callback(stage: str, step: int, total: int, message: str) -> None:
            if stage == "vae_encode":
                job.progress("VAE encode chunk", step, total)
            elif stage == "block":
                job.progress(f"denoising block {step}/{total} step", state["step"] + 1, steps)
            elif stage == "denoise":
                state["step"] = step
            elif stage == "vae_decode":
                job.progress("VAE decode chunk", step, total)

        job.log(f"Lip-sync model: {len(generate)} frames ({int(generate.sum())} generated), {steps} denoising steps, "
                f"seed {req.seed}", LogLevel.INFO)
        return self.model(
            crops, masks, generate, wav16k, float(spec.fps),
            prompt=req.custom_prompt if req.use_custom_prompt else None,
            face_id_embedding=face_id, reference_frames=references,
            vae_chunk_size=req.vae_chunk_size, vae_overlap_window_width=req.vae_overlap_window_width,
            frame_block_width=req.frame_block_width, feed_forward_num_splits=req.feed_forward_num_splits,
            face_id_cond_strength=req.face_id_cond_strength, appearance_cond_strength=req.appearance_cond_strength,
            seed=req.seed, num_inference_steps=steps, guidance_scale=self.settings.guidance_scale,
            callback=callback,
        )

    def _encode(self, job: PipelineJob, video_path: Path, spec, timeline, out_track, generated, masks, generate,
                audio, out_path: Path) -> None:
        """Pass 3: background frames of the output timeline, generated faces pasted in, to MP4 with audio.
        Real frames take the generated crop through the mouth mask; generated frames the whole face."""
        from media.crop import landmarks_in_crop
        from media.masks import face_blend_mask
        from media.paste import paste_faces
        from media.video import iter_reindexed, iter_video_chunks
        from media.writer import Mp4Writer

        num_out, size = timeline.num_frames, self.crop_size
        job.log(f"Encoding {num_out} frames", LogLevel.INFO)
        with Mp4Writer(out_path, fps=spec.fps, width=spec.width, height=spec.height, audio=audio) as writer:
            j = 0
            for frames in iter_reindexed(iter_video_chunks(video_path, spec, chunk_size=CHUNK),
                                         timeline.background_indices(), chunk_size=CHUNK):
                n = len(frames)
                if generated is not None:
                    idx = list(range(j, j + n))
                    blend = np.array(masks[j : j + n], dtype=np.float32, copy=True)
                    for k, i in enumerate(idx):
                        if generate[i] and out_track.present[i]:
                            blend[k] = face_blend_mask(landmarks_in_crop(out_track, i, size), size)
                    frames = paste_faces(frames, generated[j : j + n], out_track, idx, masks=blend)
                writer.write(frames)
                j += n
                job.progress("encoding frame", j, num_out)
        written = writer.result
        if written is None or written.num_frames != num_out:
            raise RuntimeError(f"wrote {None if written is None else written.num_frames} frames, expected {num_out}")


class _Clock:
    """``with clock("name"):`` adds the block's wall time (seconds) to ``timings[name]``."""

    def __init__(self, timings: dict[str, float]):
        self.timings = timings

    def __call__(self, name: str) -> "_Clock":
        self._name = name
        return self

    def __enter__(self) -> None:
        self._t0 = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.timings[self._name] = self.timings.get(self._name, 0.0) + time.perf_counter() - self._t0


def load_lipsync_pipeline(settings: Settings) -> LipSyncWorkerPipeline:
    """The worker's factory (``LIPSYNC_PIPELINE=lipsync``): loads the model and the face models once."""
    return LipSyncWorkerPipeline(settings)
