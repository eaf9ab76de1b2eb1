"""The pipio/lipsync input and output contract (reference/input-schema.md), as pydantic models.

Field names, types and defaults are the hosted model's. The validation rules are ours: every bad value fails
here, at submit, with a 422 naming the field, before anything is queued. Two bounds are deployment settings
(``max_num_frames``, ``max_prompt_chars``); they reach the validators through the validation context.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from urllib.parse import urlsplit
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)

DATA_URI = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[\w.+-]+)*)(?P<b64>;base64)?,", re.I)
STORAGE_SCHEME = "storage://"  # a file already in our storage (an upload, or a data URI the API unpacked)

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_FRAME_BLOCK_WIDTH = 10_000
# Cost bounds checked at submit, so no accepted request can ask a worker for unbounded memory or time.
MAX_SIDE = 4096  # output height/width: inputs stop at 4096 x 4096 (lipsync.media.probe.MAX_PIXELS)
MAX_DOWNSCALE = 64  # -k means native/k: at most 4096/64 = 64 pixels
MAX_FEED_FORWARD_SPLITS = 256
MAX_VAE_CHUNK_SIZE = 1025  # 8 * 128 + 1


class File(BaseModel):
    """A file input or output: fal's File shape. On input a bare URL string is accepted too."""

    model_config = ConfigDict(extra="ignore")

    url: str = Field(description="http(s) URL, data: URI, or a URL issued by this server's upload endpoint.")
    content_type: str | None = None
    file_name: str | None = None
    file_size: int | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        return {"url": value} if isinstance(value, str) else value

    @field_validator("url")
    @classmethod
    def _check_url(cls, url: str, info: ValidationInfo) -> str:
        url = url.strip()
        lowered = url.lower()
        if lowered.startswith(("http://", "https://")):
            if len(url) > 8192:
                raise ValueError("URL is longer than 8192 characters")
            try:
                host = urlsplit(url).hostname
            except ValueError:
                host = None
            if not host:
                raise ValueError("is not a valid URL: no host")
            return url
        if lowered.startswith(STORAGE_SCHEME) and (info.context or {}).get("internal"):
            return url  # only the API writes these; a user's storage:// URL is refused below
        if lowered.startswith("data:"):
            _, data = parse_data_uri(url)
            limit = (info.context or {}).get("max_input_bytes")
            if limit is not None and len(data) > limit:
                raise ValueError(f"data: URI holds {len(data)} bytes; at most {limit} are accepted")
            return url
        raise ValueError("must be an http(s) URL, a data: URI, or a URL from this server's upload endpoint")


def parse_data_uri(uri: str) -> tuple[str, bytes]:
    """Split a data: URI into (content type, bytes). Raises ValueError on a malformed URI."""
    match = DATA_URI.match(uri)
    if match is None:
        raise ValueError("malformed data: URI")
    payload = uri[match.end():]
    if not payload:
        raise ValueError("data: URI holds no data")
    mime = match.group("mime") or "application/octet-stream"
    if match.group("b64"):
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("data: URI is not valid base64") from None
    else:
        from urllib.parse import unquote_to_bytes

        data = unquote_to_bytes(payload)
    return mime.lower(), data


URL_PATTERN = r"^(https?://[^\s/?#]+[^\s]*|data:[^,]*,.+)$"

# On input a file is a URL string or a File object; the published schema says so.
FileInput = Annotated[
    File,
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": URL_PATTERN, "description": "http(s) URL, data: URI, or an upload URL of this server"},
                {
                    "type": "object",
                    "properties": {
                        "url": {"type": "string", "pattern": URL_PATTERN},
                        "content_type": {"type": "string"},
                        "file_name": {"type": "string"},
                        "file_size": {"type": "integer"},
                    },
                    "required": ["url"],
                },
            ]
        }
    ),
]


SyncMode = Literal["cut_off", "loop", "bounce", "silence", "remap", "published"]
SYNC_MODES: tuple[str, ...] = get_args(SyncMode)
AUDIO_LENGTH_MODES = frozenset({"loop", "bounce", "remap", "published"})
"""Sync modes whose output length follows the audio."""
WHOLE_VIDEO_MODES = frozenset({"loop", "bounce", "remap", "silence", "published"})
"""Sync modes that read the whole input when ``num_frames`` is not given (``cut_off`` reads ``num_frames``)."""


class SpeakerPoint(BaseModel):
    """A point on the face to lip-sync, in the input's own pixels (rotation applied), at a source frame."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="SpeakerPoint")

    frame: int = Field(0, ge=0, description="0-based frame index (at the output frame rate).")
    x: float = Field(ge=0, le=MAX_SIDE, description="Horizontal position in input pixels.")
    y: float = Field(ge=0, le=MAX_SIDE, description="Vertical position in input pixels.")


class SpeakerBox(BaseModel):
    """The face to lip-sync at one frame: a box [x0, y0, x1, y1] in input pixels."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="SpeakerBox")

    frame: int = Field(ge=0, description="0-based frame index (at the output frame rate).")
    box: tuple[float, float, float, float] = Field(description="x0, y0, x1, y1 in input pixels.")

    @field_validator("box")
    @classmethod
    def _box(cls, box: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
        x0, y0, x1, y1 = box
        if not all(math.isfinite(v) and 0 <= v <= MAX_SIDE for v in box):
            raise ValueError(f"coordinates must be between 0 and {MAX_SIDE}")
        if x1 <= x0 or y1 <= y0:
            raise ValueError("must be [x0, y0, x1, y1] with x0 < x1 and y0 < y1")
        return box


class SpeakerBoxes(BaseModel):
    """Per-frame boxes of the face to lip-sync (sparse keys, linearly interpolated between them)."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="SpeakerBoxes")

    boxes: tuple[SpeakerBox, ...] = Field(min_length=1, description="Keys in increasing frame order.")

    @field_validator("boxes")
    @classmethod
    def _increasing(cls, boxes: tuple[SpeakerBox, ...]) -> tuple[SpeakerBox, ...]:
        frames = [b.frame for b in boxes]
        if any(b <= a for a, b in zip(frames, frames[1:])):
            raise ValueError("keys must be in strictly increasing frame order")
        return boxes


def _inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema with its ``$defs`` written in place (the union below is published as one blob)."""
    schema = model.model_json_schema(ref_template="{model}")
    defs = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return inline(defs[node["$ref"]])
            return {k: inline(v) for k, v in node.items()}
        if isinstance(node, list):
            return [inline(v) for v in node]
        return node

    return inline(schema)


Speaker = Annotated[
    Literal["largest", "auto"] | SpeakerPoint | SpeakerBoxes,
    WithJsonSchema({
        "anyOf": [{"type": "string", "enum": ["largest", "auto"]}, _inline_schema(SpeakerPoint),
                  _inline_schema(SpeakerBoxes)],
    }),
]
"""Hashable (strings and frozen models of tuples): the worker's cache keys may hold it as it is."""


def _speaker_value(value: Any) -> Any:
    """One readable error for a bad ``speaker`` instead of one per union member."""
    if isinstance(value, (str, SpeakerPoint, SpeakerBoxes)):
        if isinstance(value, str) and value not in ("largest", "auto"):
            raise ValueError('must be "largest", "auto", a point {"frame", "x", "y"} or {"boxes": [...]}')
        return value
    if not isinstance(value, dict):
        raise ValueError('must be "largest", "auto", a point {"frame", "x", "y"} or {"boxes": [...]}')
    model = SpeakerBoxes if "boxes" in value else SpeakerPoint
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ValueError(f"{where}: {first['msg'].removeprefix('Value error, ')}" if where else first["msg"]) from None


def _bounds(minimum: int, maximum: int | None = None) -> dict[str, Any]:
    """The static bounds of a field, published in the JSON schema (forms such as the playground show them).
    Only published, not enforced: the validators below are the rules, with messages and special values."""
    extra: dict[str, Any] = {"minimum": minimum}
    if maximum is not None:
        extra["maximum"] = maximum
    return {"json_schema_extra": extra}


def _limit(info: ValidationInfo, name: str, default: int) -> int:
    context = info.context or {}
    return int(context.get(name, default))


class LipsyncInput(BaseModel):
    """Input of pipio/lipsync."""

    model_config = ConfigDict(extra="ignore", title="LipsyncInput")

    video: FileInput = Field(description="Video (or still image: png/jpg/webp) of the face to edit.")
    audio: FileInput = Field(description="Audio track to lip-sync to; a video file's audio track is accepted.")
    use_custom_prompt: bool = Field(False, description="Use custom_prompt instead of the automatic prompt.")
    custom_prompt: str = Field("A high quality video.", description="Text describing the edited video.")
    frame_rate: int = Field(-1, description="Output fps; -1 keeps the native fps.", **_bounds(-1, 120))
    height: int = Field(-1, description="Output height; -1 native, -k native/k, or a positive size.",
                        **_bounds(-MAX_DOWNSCALE, MAX_SIDE))
    width: int = Field(-1, description="Output width; -1 native, -k native/k, or a positive size.",
                       **_bounds(-MAX_DOWNSCALE, MAX_SIDE))
    num_frames: int = Field(100, description="Frames to process from the start of the input.", **_bounds(1))
    vae_chunk_size: int = Field(65, description="Frames per VAE encode/decode chunk; must be 8n+1.",
                                **_bounds(9, MAX_VAE_CHUNK_SIZE))
    vae_overlap_window_width: int = Field(16, description="Overlap between VAE chunks; 0 = none.", **_bounds(0))
    frame_block_width: int = Field(136, description="Frames the transformer sees at a time.", **_bounds(1))
    feed_forward_num_splits: int = Field(2, description="Chunks for the feed-forward layers.",
                                         **_bounds(1, MAX_FEED_FORWARD_SPLITS))
    face_id_cond_strength: int = Field(-1, description="Identity conditioning; -1 automatic, else 0..16.",
                                       **_bounds(-1, 16))
    appearance_cond_strength: int = Field(1, description="Alignment of synthetic frames with the input; 1..16.",
                                          **_bounds(1, 16))
    speaker: Speaker = Field(
        "largest",
        description="Extension of the hosted schema. Which face to lip-sync: \"largest\" (the default), \"auto\" "
        "(the one speaking in the video's own audio, shot by shot), a point {frame, x, y} in input pixels on the "
        "face, or {boxes: [{frame, box: [x0, y0, x1, y1]}, …]} (sparse keys, interpolated). Other faces are left "
        "untouched.")
    sync_mode: SyncMode = Field(
        "cut_off",
        description="Extension of the hosted schema. When audio and video lengths differ: cut_off (the video's "
        "num_frames decide; audio padded or cut), loop, bounce (ping-pong) or remap (time-stretch) the video to "
        "the audio's length, silence (the whole video; audio padded with silence), or published (the rule of "
        "MuseTalk's and LatentSync's published inference: the output follows the audio, the video cycling forward "
        "then backward with each turning frame shown twice; frame_rate 25 adds LatentSync's re-timing).")
    edit_addition_start_frames: list[int] = Field(default_factory=list, description="Where new frames go.")
    edit_addition_durations: list[int] = Field(default_factory=list, description="Frames added at each start.")
    edit_removal_ranges: list[int] = Field(default_factory=list, description="Flat [start, end, …] pairs, inclusive.")
    edit_removal_bridge_durations: list[int] = Field(
        default_factory=list, description="Generated bridge length per removal; 0 = jump cut."
    )
    seed: int = Field(42, description="Same seed + same inputs = same output.")
    skip_video_cache: bool = Field(False, description="Neither read nor fill the worker's video-side cache for this "
                                   "request (the output is the same either way; it only costs time).")

    @field_validator("custom_prompt")
    @classmethod
    def _prompt_length(cls, value: str, info: ValidationInfo) -> str:
        limit = _limit(info, "max_prompt_chars", 2000)
        if len(value) > limit:
            raise ValueError(f"must be at most {limit} characters, got {len(value)}")
        return value

    @field_validator("frame_rate")
    @classmethod
    def _frame_rate(cls, value: int) -> int:
        if value != -1 and not 1 <= value <= 120:
            raise ValueError("must be -1 (native) or between 1 and 120")
        return value

    @field_validator("height", "width")
    @classmethod
    def _size(cls, value: int) -> int:
        if value == 0 or value < -MAX_DOWNSCALE:
            raise ValueError(f"must be -k (native/k, 1 <= k <= {MAX_DOWNSCALE}) or a positive size")
        if value > MAX_SIDE:
            raise ValueError(f"must be at most {MAX_SIDE} pixels (the largest input side)")
        return value

    @field_validator("num_frames")
    @classmethod
    def _num_frames(cls, value: int, info: ValidationInfo) -> int:
        limit = _limit(info, "max_num_frames", 10_000)
        if not 1 <= value <= limit:
            raise ValueError(f"must be between 1 and {limit}")
        return value

    @field_validator("vae_chunk_size")
    @classmethod
    def _chunk(cls, value: int) -> int:
        if value < 9 or value > MAX_VAE_CHUNK_SIZE or (value - 1) % 8 != 0:
            raise ValueError(f"must be 8n+1 with n >= 1, at most {MAX_VAE_CHUNK_SIZE} (9, 17, 25, …, 65, …)")
        return value

    @field_validator("frame_block_width")
    @classmethod
    def _block(cls, value: int) -> int:
        # Not bounded by max_num_frames: a block wider than the clip is one block (and a deployment with a lower
        # frame limit than the default 136 must still take requests that leave it out); engines cap it by memory.
        if not 1 <= value <= MAX_FRAME_BLOCK_WIDTH:
            raise ValueError(f"must be between 1 and {MAX_FRAME_BLOCK_WIDTH}")
        return value

    @field_validator("feed_forward_num_splits")
    @classmethod
    def _splits(cls, value: int) -> int:
        if not 1 <= value <= MAX_FEED_FORWARD_SPLITS:
            raise ValueError(f"must be between 1 and {MAX_FEED_FORWARD_SPLITS}")
        return value

    @field_validator(
        "edit_addition_start_frames", "edit_addition_durations", "edit_removal_ranges", "edit_removal_bridge_durations",
        mode="before",
    )
    @classmethod
    def _list_length(cls, value: Any, info: ValidationInfo) -> Any:
        limit = 2 * _limit(info, "max_num_frames", 10_000)
        if isinstance(value, list) and len(value) > limit:
            raise ValueError(f"must hold at most {limit} values")
        return value

    @model_validator(mode="before")
    @classmethod
    def _default_num_frames(cls, data: Any, info: ValidationInfo) -> Any:
        """A deployment whose frame limit is below the default 100 takes requests that leave ``num_frames`` out
        (``cut_off``: the default is then the limit, instead of a stored 100 the worker would refuse)."""
        if isinstance(data, dict) and "num_frames" not in data and data.get("sync_mode", "cut_off") == "cut_off":
            limit = _limit(info, "max_num_frames", 10_000)
            if limit < cls.model_fields["num_frames"].default:
                return {**data, "num_frames": limit}
        return data

    @field_validator("speaker", mode="before")
    @classmethod
    def _speaker(cls, value: Any) -> Any:
        return _speaker_value(value)

    @field_validator("face_id_cond_strength")
    @classmethod
    def _face_id(cls, value: int) -> int:
        if value != -1 and not 0 <= value <= 16:
            raise ValueError("must be -1 (automatic) or between 0 and 16")
        return value

    @field_validator("appearance_cond_strength")
    @classmethod
    def _appearance(cls, value: int) -> int:
        if not 1 <= value <= 16:
            raise ValueError("must be between 1 and 16")
        return value

    @field_validator("edit_addition_start_frames")
    @classmethod
    def _starts(cls, value: list[int]) -> list[int]:
        if any(v < 0 for v in value):
            raise ValueError("frame indices must be >= 0")
        return value

    @field_validator("edit_addition_durations")
    @classmethod
    def _durations(cls, value: list[int]) -> list[int]:
        if any(v < 1 for v in value):
            raise ValueError("each duration must be at least 1")
        return value

    @field_validator("edit_removal_bridge_durations")
    @classmethod
    def _bridges(cls, value: list[int]) -> list[int]:
        if any(v < 0 for v in value):
            raise ValueError("each bridge duration must be >= 0")
        return value

    @field_validator("edit_removal_ranges")
    @classmethod
    def _ranges(cls, value: list[int]) -> list[int]:
        if len(value) % 2:
            raise ValueError("must hold [start, end] pairs: an even number of values")
        pairs = list(zip(value[::2], value[1::2]))
        for start, end in pairs:
            if start < 0 or end < start:
                raise ValueError(f"pair [{start}, {end}] must have 0 <= start <= end")
        for (_, prev_end), (start, _) in zip(pairs, pairs[1:]):
            if start <= prev_end:
                raise ValueError("pairs must be sorted and must not overlap")
        return value

    @field_validator("seed")
    @classmethod
    def _seed(cls, value: int) -> int:
        if not INT64_MIN <= value <= INT64_MAX:
            raise ValueError("must fit in a 64-bit signed integer")
        return value

    @model_validator(mode="after")
    def _edits_consistent(self, info: ValidationInfo) -> "LipsyncInput":
        errors = []
        max_frames = _limit(info, "max_num_frames", 10_000)
        bound = self.source_frame_bound(max_frames)
        starts, durations = self.edit_addition_start_frames, self.edit_addition_durations
        if len(starts) != len(durations):
            errors.append(
                ("edit_addition_durations", f"must have one entry per start frame ({len(starts)}), got {len(durations)}")
            )
        if any(s >= bound for s in starts):
            errors.append(("edit_addition_start_frames", f"each start must be below {self._bound_name(bound)}"))
        pairs = len(self.edit_removal_ranges) // 2
        if pairs != len(self.edit_removal_bridge_durations):
            errors.append(
                (
                    "edit_removal_bridge_durations",
                    f"must have one entry per removal pair ({pairs}), got {len(self.edit_removal_bridge_durations)}",
                )
            )
        if any(e >= bound for e in self.edit_removal_ranges[1::2]):
            errors.append(("edit_removal_ranges", f"each end must be below {self._bound_name(bound)}"))
        if self.vae_overlap_window_width < 0 or self.vae_overlap_window_width >= self.vae_chunk_size:
            errors.append(("vae_overlap_window_width", f"must be >= 0 and below vae_chunk_size ({self.vae_chunk_size})"))
        errors += self._speaker_errors(bound)
        if not errors:
            errors = self._timeline_errors(bound, max_frames)
        if errors:
            raise FieldErrors(errors)
        return self

    @model_serializer(mode="wrap")
    def _keep_unset_num_frames(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """A sync mode that reads the whole input when ``num_frames`` is not given must still know that it was
        not given after the queue: the API stores this dump and the worker validates it again."""
        data = handler(self)
        if self.sync_mode in WHOLE_VIDEO_MODES and "num_frames" not in self.model_fields_set:
            data.pop("num_frames", None)
        return data

    def source_frame_bound(self, max_num_frames: int) -> int:
        """Most input frames the request reads: ``num_frames``, except that a ``sync_mode`` other than
        ``cut_off`` reads the whole input (up to ``max_num_frames``) when ``num_frames`` is not given."""
        if self.sync_mode in WHOLE_VIDEO_MODES and "num_frames" not in self.model_fields_set:
            return max_num_frames
        return self.num_frames

    def _bound_name(self, bound: int) -> str:
        return f"num_frames ({bound})" if bound == self.num_frames else f"max_num_frames ({bound})"

    def _speaker_errors(self, bound: int) -> list[tuple[str, str]]:
        frames = ([self.speaker.frame] if isinstance(self.speaker, SpeakerPoint) else
                  [b.frame for b in self.speaker.boxes] if isinstance(self.speaker, SpeakerBoxes) else [])
        if len(frames) > bound:
            return [("speaker", f"has {len(frames)} boxes; at most one per frame ({bound})")]
        if any(f >= bound for f in frames):
            return [("speaker", f"frame {max(frames)} is beyond the frames read: must be below {self._bound_name(bound)}")]
        return []

    def _timeline_errors(self, bound: int, max_frames: int) -> list[tuple[str, str]]:
        """lipsync.media.timeline's rules that need no video, and the output's length bound (edits included).

        ``bound`` (``num_frames``, see ``source_frame_bound``) stands in for the input's length: the real one is
        at most that, so what passes here can only get shorter in the worker.
        """
        starts, pairs = self.edit_addition_start_frames, list(zip(self.edit_removal_ranges[::2], self.edit_removal_ranges[1::2]))
        if len(set(starts)) != len(starts):
            return [("edit_addition_start_frames", f"has the same start frame twice: {starts}")]
        for k, start in enumerate(starts):
            inside = next(((a, b) for a, b in pairs if a <= start <= b), None)
            if inside is not None:
                return [("edit_addition_start_frames", f"[{k}] = {start} falls inside the removed range {list(inside)}")]
        removed = sum(b - a + 1 for a, b in pairs)
        added = sum(self.edit_addition_durations) + sum(self.edit_removal_bridge_durations)
        if removed >= bound and added == 0:
            return [("edit_removal_ranges", "removes every frame and adds none: the output would be empty")]
        if self.sync_mode in WHOLE_VIDEO_MODES and "num_frames" not in self.model_fields_set:
            return []  # the whole input is read: the output's length is checked in the worker, where it is known
        length = bound - removed + added
        if length > max_frames:
            field = "edit_addition_durations" if sum(self.edit_addition_durations) else "edit_removal_bridge_durations"
            return [(field, f"the output would have {length} frames; at most {max_frames} (max_num_frames) are allowed")]
        return []



class FieldErrors(ValueError):
    """Cross-field problems, each with the field it belongs to; the API turns them into one 422."""

    def __init__(self, errors: list[tuple[str, str]]):
        super().__init__("; ".join(f"{field}: {msg}" for field, msg in errors))
        self.errors = errors


class LipsyncOutput(BaseModel):
    """Output of pipio/lipsync: an MP4 with the input audio aligned to the output timeline."""

    video: File


def file_fields(params: BaseModel) -> dict[str, File]:
    """The file inputs of a validated request, by field name."""
    return {name: value for name, value in params if isinstance(value, File)}


def validate_input(model: type[BaseModel], data: Any, context: dict[str, Any] | None = None) -> BaseModel:
    """Validate a request body; raise ``InputInvalid`` with fal/FastAPI-style ``detail`` entries, one per field."""
    invalid = _not_unicode(data)
    if invalid:
        raise InputInvalid(invalid)
    try:
        return model.model_validate(data, context=context)
    except ValidationError as exc:
        raise InputInvalid(_details(exc)) from None


def _not_unicode(data: Any) -> list[dict[str, Any]]:
    """One 422 entry per top-level field holding a string that is not valid Unicode text (a lone surrogate
    such as ``"\\ud800"``, which JSON can escape but nothing downstream can encode)."""

    def bad(value: Any) -> bool:
        if isinstance(value, str):
            if value.isascii():
                return False
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return True
            return False
        if isinstance(value, dict):
            return any(bad(k) or bad(v) for k, v in value.items())
        if isinstance(value, list):
            return any(bad(v) for v in value)
        return False

    if not isinstance(data, dict):
        return []
    return [{"loc": ["body", key if not bad(key) else "body"], "msg": "is not valid Unicode text (a lone surrogate)",
             "type": "string_unicode"} for key, value in data.items() if bad(key) or bad(value)]


def _details(exc: ValidationError) -> list[dict[str, Any]]:
    details = []
    for err in exc.errors(include_url=False):
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, FieldErrors):
            details += [{"loc": ["body", f], "msg": m, "type": "value_error"} for f, m in cause.errors]
            continue
        loc = list(err["loc"])
        if loc[-1:] == ["url"] and len(loc) == 2:  # a File's url: name the input field itself
            loc = loc[:1]
        msg = err["msg"].removeprefix("Value error, ")
        entry = {"loc": ["body", *loc], "msg": msg, "type": err["type"]}
        if "input" in err and _is_small(err["input"]):
            entry["input"] = err["input"]
        details.append(entry)
    return details


def _is_small(value: Any) -> bool:
    """Echo only short, JSON-safe inputs: a huge int or a non-finite float would not serialise."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, int):
        return INT64_MIN <= value <= INT64_MAX
    return isinstance(value, str) and len(value) <= 200


class InputInvalid(ValueError):
    """A request body failed validation; ``detail`` is the 422 body's list."""

    def __init__(self, detail: list[dict[str, Any]]):
        super().__init__(detail)
        self.detail = detail
