"""``LIPSYNC_COMPILE``: after the warm-up at worker start, no request compiles again.

Counted with dynamo's own counter (``counters["stats"]["unique_graphs"]``: one per graph it compiles), over engine
requests that vary what real traffic varies: the length (token counts, frame blocks), identity (every real
request carries a face-ID embedding; strength 4 or 8 by the auto rule, 1 and 3 by hand), feed-forward splits
(1, 2, 4) and the appearance strength (1: no reference bias; 3 and 5: a bias, two different values). The cheap
``aot_eager`` backend traces exactly what inductor would be handed, so the counts are inductor's too; it also runs
the traced ops as written, so compiled output must equal the uncompiled engine's bit for bit. ``aot_eager``,
not ``eager``: it runs AOTAutograd as inductor does, where a Python float that cannot become a graph input is
specialised (``eager`` keeps floats symbolic and would miss the reference bias recompiling per value).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters

from lipsync.model.engine import CropBatch, EngineOptions, EngineRequest, Knobs, landmarks_to_crop
from lipsync.model.pipio.engine import compile_blocks, warm_up
from lipsync.model.weights import load_engine
from lipsync.testing.media import tracked_face_clip

MAX_FRAMES = 33
REQUESTS = [  # (frames, knobs, bridge): the traffic after the warm-up
    (17, Knobs(feed_forward_num_splits=2, appearance_cond_strength=1), False),
    (25, Knobs(feed_forward_num_splits=1, appearance_cond_strength=3), False),
    (33, Knobs(feed_forward_num_splits=4, appearance_cond_strength=1, frame_block_width=24), True),
    (9, Knobs(feed_forward_num_splits=4, appearance_cond_strength=5, face_id_cond_strength=1), False),
    (29, Knobs(feed_forward_num_splits=1, appearance_cond_strength=3, face_id_cond_strength=3), True),
]


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """A real face (the astronaut, panning), decoded and tracked once."""
    return tracked_face_clip(tmp_path_factory.mktemp("clip") / "face.mp4", frames=MAX_FRAMES, size=(192, 144))


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def pipio_engine():
    return load_engine(None, EngineOptions(num_inference_steps=1), "pipio")


def run(engine, clip, num_frames: int, knobs: Knobs, bridge: bool) -> np.ndarray:
    """One request through the engine interface, as the worker makes it (identity included)."""
    frames, track = clip
    affines = engine.face_affines(track)[:num_frames]
    crops = engine.crop(frames[:num_frames], affines)
    landmarks = landmarks_to_crop(track.landmarks[:num_frames], affines)
    generate = np.zeros(num_frames, bool)
    if bridge:
        generate[num_frames // 2 : num_frames // 2 + 3] = True
    audio = (0.2 * np.sin(np.arange(num_frames * 640) / 16000 * 2 * np.pi * 180)).astype(np.float32)
    request = EngineRequest(audio=audio, fps=25.0, num_frames=num_frames, generate=generate, is_image=False,
                            knobs=knobs, log=lambda message: None, progress=lambda *args: None,
                            identity=np.linspace(-0.2, 0.2, 128, dtype=np.float32))
    batches = [CropBatch(s, crops[s : s + 8], np.ones(len(crops[s : s + 8]), bool), landmarks[s : s + 8])
               for s in range(0, num_frames, 8)]
    return np.concatenate(list(engine.generate(request, batches)))


def graphs() -> int:
    return counters["stats"]["unique_graphs"]


def test_no_request_recompiles_after_the_warm_up(clip):
    engine = pipio_engine()
    compile_blocks(engine.model, backend="aot_eager")
    warm_up(engine)
    warmed = graphs()
    assert warmed > 0  # the warm-up did compile
    for num_frames, knobs, bridge in REQUESTS:
        run(engine, clip, num_frames, knobs, bridge)
        assert graphs() == warmed, (f"{num_frames} frames, {knobs} recompiled: {graphs() - warmed} new graph(s) "
                                    f"after the {warmed} of the warm-up")


def test_compiled_output_equals_the_uncompiled_engine(clip):
    eager, compiled = pipio_engine(), pipio_engine()
    compile_blocks(compiled.model, backend="aot_eager")
    for num_frames, knobs, bridge in REQUESTS[1:3]:  # a bias and no bias, 1 and 4 splits, a bridge
        expected = run(eager, clip, num_frames, knobs, bridge)
        np.testing.assert_array_equal(run(compiled, clip, num_frames, knobs, bridge), expected)
    assert graphs() > 0  # the compiled engine really ran compiled blocks
