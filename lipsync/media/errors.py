"""Typed media errors: each a subclass of a contract error with a more specific ``error_type``.

They stay 422 errors that name the request field (``video`` or ``audio``), so the API answers them the same
way as any other validation error, while logs and metrics can tell the causes apart.
"""

from __future__ import annotations

from lipsync.contract.errors import InvalidInput, InvalidMedia, NoFaceDetected

__all__ = [
    "AudioTooShort",
    "ImageTooSmall",
    "ImplausibleFrameRate",
    "InvalidInput",
    "InvalidMedia",
    "NoAudioStream",
    "NoFaceDetected",
    "NoVideoStream",
    "NotAMediaFile",
    "TruncatedMedia",
    "UnsupportedCodec",
]


class NotAMediaFile(InvalidMedia):
    """The bytes are not a container or image format FFmpeg recognises."""

    error_type = "not_a_media_file"


class TruncatedMedia(InvalidMedia):
    """A recognised container whose data ends early or is corrupt (a partial upload or download)."""

    error_type = "truncated_media"


class UnsupportedCodec(InvalidMedia):
    """The container is fine but the local FFmpeg has no decoder for its codec."""

    error_type = "unsupported_codec"


class NoVideoStream(InvalidMedia):
    """A ``video`` input without any video stream (e.g. an audio-only file)."""

    error_type = "no_video_stream"


class NoAudioStream(InvalidMedia):
    """An ``audio`` input without any audio stream."""

    error_type = "no_audio_stream"


class AudioTooShort(InvalidMedia):
    """The audio decodes to no samples (or fewer than one output frame's worth)."""

    error_type = "audio_too_short"


class ImageTooLarge(InvalidMedia):
    """More pixels per frame than the server decodes: refused from the header, before any allocation."""

    error_type = "image_too_large"


class ImageTooSmall(InvalidMedia):
    """A still image or video whose smaller side is below the minimum the face pipeline can use."""

    error_type = "image_too_small"


class ImplausibleFrameRate(InvalidMedia):
    """Timestamps that spread the frames far thinner than any real video (200 frames declared over 10 h):
    at its native rate the output would last hours and its audio track would take gigabytes."""

    error_type = "implausible_frame_rate"
