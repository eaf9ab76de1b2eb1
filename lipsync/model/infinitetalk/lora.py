"""LoRA files in the weights folder, merged into the transformer at load as the authors' ``wan/wan_lora.py`` does.

    DIR/loras/NAME.safetensors ...          every file is merged, scale 1 unless lora.json says otherwise
    DIR/loras/lora.json (optional)          {"scales": {"NAME.safetensors": 0.8}, "steps": 4,
                                             "text_guidance": 1.0, "audio_guidance": 2.0}

Keys as the distillation LoRAs people use name them (Kijai's lightx2v, FusioniX): ``diffusion_model.<the authors'
parameter path>.lora_down.weight`` / ``.lora_up.weight`` (weight += scale · up @ down — no alpha/rank factor: the
authors ignore ``.alpha``), ``.diff`` (weight += scale · diff) and ``.diff_b`` (bias += scale · diff_b). A key that
names no parameter of the model is an error naming it. Merged in fp32 and cast back, one tensor at a time.
Why not peft: these files are not peft adapters (``diff``/``diff_b`` full deltas, alphas ignored), and a merged
LoRA costs nothing per step. ``lora.json``'s steps and guidance are the deployment's defaults with the LoRA
(the README advises text 1, audio 2, and 4 steps for lightx2v, 8 for FusioniX); ``LIPSYNC_NUM_INFERENCE_STEPS``
and ``LIPSYNC_GUIDANCE_SCALE`` still win.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lipsync.model.infinitetalk import keymaps
from lipsync.model.loading import WeightsLoadError

FOLDER = "loras"
PREFIX = "diffusion_model."


@dataclass
class LoraPlan:
    files: list[tuple[Path, float]] = field(default_factory=list)
    steps: int | None = None
    text_guidance: float | None = None
    audio_guidance: float | None = None


def plan(root: Path) -> LoraPlan:
    folder = root / FOLDER
    if not folder.is_dir():
        return LoraPlan()
    meta = json.loads((folder / "lora.json").read_text()) if (folder / "lora.json").is_file() else {}
    scales = meta.get("scales", {})
    files = [(p, float(scales.get(p.name, 1.0))) for p in sorted(folder.glob("*.safetensors"))]
    return LoraPlan(files, meta.get("steps"), meta.get("text_guidance"), meta.get("audio_guidance"))


@torch.no_grad()
def merge(model: torch.nn.Module, path: Path, scale: float) -> int:
    """Merge one LoRA file into ``model`` (an ``InfiniteTalkTransformer``); returns the parameters changed."""
    from safetensors import safe_open

    rename = keymaps.mapper(keymaps.TRANSFORMER)
    params = dict(model.named_parameters())
    bad: list[str] = []
    changed = 0
    with safe_open(str(path), framework="pt") as f:
        keys = set(f.keys())
        for key in sorted(keys):
            if not key.startswith(PREFIX) or key.endswith((".alpha", "lora_up.weight")):
                continue
            base = key[len(PREFIX):]
            if key.endswith("lora_down.weight"):
                target = base.replace("lora_down.weight", "weight")
                up = key.replace("lora_down.weight", "lora_up.weight")
                if up not in keys:
                    bad.append(f"{up} (missing: its lora_down is there)")
                    continue
                delta = f.get_tensor(up).float() @ f.get_tensor(key).float()
            elif key.endswith(".diff_b"):
                target, delta = base[: -len(".diff_b")] + ".bias", f.get_tensor(key).float()
            elif key.endswith(".diff"):
                target, delta = base[: -len(".diff")] + ".weight", f.get_tensor(key).float()
            else:
                bad.append(key)
                continue
            ours = rename(target)
            param = params.get(ours) if ours else None
            if param is None or tuple(param.shape) != tuple(delta.shape):
                bad.append(f"{key} (-> {target}: {'no such parameter' if param is None else 'shape ' + str(tuple(delta.shape)) + ' vs ' + str(tuple(param.shape))})")
                continue
            param.copy_((param.float() + scale * delta.to(param.device)).to(param.dtype))
            changed += 1
    if bad:
        raise WeightsLoadError("LoRA", str(path), [], bad, [])
    return changed
