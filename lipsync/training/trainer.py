"""``lipsync train CONFIG``: the distributed trainer (run under ``accelerate launch``; docs/training.md).

One process per device; accelerate provides DDP, FSDP or DeepSpeed (its config file), bf16 autocast and
gradient accumulation. The transformer is trained (all of it, the new lip-sync modules only, or LoRA through
peft plus the new modules); the VAE, Whisper and T5 are frozen, the constant prompt is encoded once, and each
step runs the objective of ``lipsync/training/objective.py``.

Output folder::

    OUT/train_log.jsonl                      one line per logged step: step, loss, lr (main process)
    OUT/logs/                                TensorBoard
    OUT/checkpoints/step-00001000/state/     accelerate state: model, optimizer, LR schedule, RNG, EMA
    OUT/checkpoints/step-00001000/pipeline/  the save_pretrained layout the worker serves (LIPSYNC_WEIGHTS_DIR)
    OUT/checkpoints/step-00001000/trainer_state.json   step and samples consumed per process
    OUT/validation/step-00001000.mp4         a held-out clip rendered through the pipeline
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lipsync.model.devices import torch_dtype
from lipsync.model.pipio.pipeline import LipSyncPipeline
from lipsync.model.pipio.text_encoder import encode_prompt
from lipsync.model.pipio.transformer_lipsync import LIPSYNC_MODULES
from lipsync.training.config import TrainConfig
from lipsync.training.data import ClipStream, first_samples
from lipsync.training.objective import EncodeCache, build_example, example_seed, flow_matching_loss
from lipsync.training.shards import list_shards

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------------- model
def load_pipeline(config: TrainConfig) -> LipSyncPipeline:
    """The starting pipeline on CPU in fp32: random, ours, or stock LTX-Video + a Whisper encoder."""
    from lipsync.model.pipio.config import load_config

    init = config.init
    model_config = load_config(init.model)
    if init.weights is None:
        return LipSyncPipeline.from_config(model_config, init_seed=init.init_seed)
    if not init.stock_ltx:
        return LipSyncPipeline.from_pretrained(init.weights)
    # Stock LTX-Video has no audio encoder: stage a folder that links its parts and the Whisper checkpoint.
    stage = Path(tempfile.mkdtemp(prefix="lipsync-init-"))
    for part in ("transformer", "vae", "text_encoder", "tokenizer", "scheduler"):
        if (Path(init.weights) / part).exists():
            (stage / part).symlink_to(Path(init.weights).resolve() / part)
    (stage / "audio_encoder").symlink_to(Path(init.audio_encoder).resolve())
    stock_keys = {"in_channels", "out_channels", "patch_size", "patch_size_t", "num_attention_heads",
                  "attention_head_dim", "cross_attention_dim", "num_layers", "activation_fn", "qk_norm",
                  "norm_elementwise_affine", "norm_eps", "caption_channels", "attention_bias", "attention_out_bias"}
    overrides = {k: v for k, v in model_config.transformer.items() if k not in stock_keys}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init.init_seed)
        pipe = LipSyncPipeline.from_pretrained(stage, transformer_overrides=overrides, allow_new_lipsync_modules=True,
                                               pipeline_config=model_config.pipeline)
    for report in pipe.load_reports:
        if report.newly_initialized:
            log.info("%s: %d tensors start fresh (lip-sync modules)", report.component, len(report.newly_initialized))
    return pipe


def select_trainable(transformer: torch.nn.Module, config: TrainConfig) -> torch.nn.Module:
    """Set ``requires_grad`` by ``config.trainable``; LoRA adapters are injected into the module in place."""
    if config.trainable == "lora":
        from peft import LoraConfig, inject_adapter_in_model

        inject_adapter_in_model(LoraConfig(r=config.lora.rank, lora_alpha=config.lora.alpha,
                                           target_modules=config.lora.target_modules, init_lora_weights=True),
                                transformer)
    for name, param in transformer.named_parameters():
        new = any(m in name for m in LIPSYNC_MODULES)
        param.requires_grad_(config.trainable == "all" or new or (config.trainable == "lora" and "lora_" in name))
    return transformer


def merged_state_dict(transformer: torch.nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A LoRA-injected transformer's state -> the plain layout, each adapter folded into its base weight with
    peft's own ``get_delta_weight`` (the module itself is left untouched)."""
    from peft.tuners.lora import LoraLayer

    deltas = {f"{name}.weight": module.get_delta_weight("default").detach().cpu()
              for name, module in transformer.named_modules() if isinstance(module, LoraLayer)}
    plain = {}
    for key, value in state.items():
        if "lora_" in key:
            continue
        key = key.replace(".base_layer.", ".")
        plain[key] = value.detach().cpu() + deltas[key].to(value.dtype) if key in deltas else value.detach().cpu()
    return plain


# ---------------------------------------------------------------------------------------------------- loop
@dataclass
class TrainResult:
    output_dir: Path
    last_checkpoint: Path | None
    losses: list[tuple[int, float]]
    seconds: float


class Trainer:
    def __init__(self, config: TrainConfig):
        from accelerate import Accelerator, DistributedDataParallelKwargs
        from accelerate.utils import ProjectConfiguration

        self.config = config
        self.out = Path(config.output_dir)
        self.accelerator = Accelerator(
            cpu=not torch.cuda.is_available(),  # CPU-only: still one gloo process group across launched processes
            mixed_precision=config.mixed_precision, gradient_accumulation_steps=config.gradient_accumulation_steps,
            log_with=config.report_to or None,
            project_config=ProjectConfiguration(project_dir=str(self.out), logging_dir=str(self.out / "logs")),
            # the face-ID branch is skipped on examples without face-ID: its parameters get no gradient there
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
        acc = self.accelerator
        if config.sync_loss.weight > 0:
            raise NotImplementedError(
                "sync_loss.weight > 0 is not wired yet: the hook is Trainer.sync_loss, the SyncNet pieces are in "
                "lipsync.evaluation.syncnet / lipsync.evaluation.syncnet_v2 (docs/training.md)")
        self.pipe = load_pipeline(config)
        self.weight_dtype = torch.float32 if config.mixed_precision == "no" else torch_dtype(config.mixed_precision)
        for module in (self.pipe.vae, self.pipe.audio_encoder, self.pipe.text_encoder):
            module.requires_grad_(False).to(acc.device)
            if self.weight_dtype != torch.float32:
                module.to(self.weight_dtype)
        transformer = select_trainable(self.pipe.transformer, config).to(acc.device).train()
        if config.gradient_checkpointing:
            transformer.enable_gradient_checkpointing()
        self.params = [p for p in transformer.parameters() if p.requires_grad]
        o = config.optim
        optimizer = torch.optim.AdamW(self.params, lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay)
        from diffusers.optimization import get_scheduler

        # accelerate steps a prepared scheduler once per process per optimizer step: scale its horizon to match
        schedule = get_scheduler(o.lr_scheduler, optimizer, num_warmup_steps=o.warmup_steps * acc.num_processes,
                                 num_training_steps=config.max_steps * acc.num_processes)
        self.model, self.optimizer, self.schedule = acc.prepare(transformer, optimizer, schedule)
        self.ema = None
        if config.ema.enabled:
            from diffusers.training_utils import EMAModel

            self.ema = EMAModel(self.params, decay=config.ema.decay)
            self.ema.to(acc.device)
            acc.register_for_checkpointing(self.ema)
        with torch.no_grad():  # the constant prompt, once
            self.text, self.text_mask = encode_prompt(self.pipe.tokenizer, self.pipe.text_encoder,
                                                      self.pipe.config.default_prompt, self.pipe.config.max_prompt_tokens)
        self.text = self.text.float()
        self.pipe.text_encoder.to("cpu")  # T5-XXL (9.5 GB in bf16) is not needed on the device again
        self.cache = EncodeCache(config.cache_items)
        self.stream = ClipStream(list_shards(config.data, "train"), rank=acc.process_index,
                                 world=acc.num_processes, seed=config.seed)
        self.step = 0
        if acc.is_main_process:
            self.out.mkdir(parents=True, exist_ok=True)
            n_train = sum(p.numel() for p in self.params)
            n_all = sum(p.numel() for p in self.pipe.transformer.parameters())
            log.info("training %s: %.2f M of %.2f M transformer parameters, %d processes (%s), mixed precision %s",
                     config.trainable, n_train / 1e6, n_all / 1e6, acc.num_processes, acc.distributed_type,
                     config.mixed_precision)
        if config.report_to:
            acc.init_trackers("lipsync", config={k: str(v) for k, v in config.to_dict().items()})

    # ------------------------------------------------------------------------------------------ checkpoints
    def checkpoints(self) -> list[Path]:
        return sorted((self.out / "checkpoints").glob("step-*"))

    def resume(self, where: str) -> None:
        """``latest`` or a checkpoint folder: model, optimizer, LR schedule, RNG and EMA, then the data."""
        path = Path(where) if where != "latest" else (self.checkpoints() or [None])[-1]
        if path is None:
            log.info("no checkpoint in %s: starting from step 0", self.out / "checkpoints")
            return
        self.accelerator.load_state(str(path / "state"))
        state = json.loads((path / "trainer_state.json").read_text())
        self.step = int(state["step"])
        self.stream.skip(state["samples_per_process"])
        log.info("resumed from %s at step %d", path, self.step)

    def save(self) -> Path:
        acc = self.accelerator
        path = self.out / "checkpoints" / f"step-{self.step:08d}"
        acc.save_state(str(path / "state"))
        self.export(path / "pipeline")
        if acc.is_main_process:
            (path / "trainer_state.json").write_text(json.dumps({
                "step": self.step, "samples_per_process": self.stream.consumed,
                "processes": acc.num_processes}, indent=1))
            for old in self.checkpoints()[: -self.config.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()
        return path

    def export(self, directory: Path) -> None:
        """The servable pipeline (``save_pretrained`` layout, tokenizer and pipeline config included)."""
        acc = self.accelerator
        use_ema = self.ema is not None and self.config.ema.export
        if use_ema:
            self.ema.store(self.params)
            self.ema.copy_to(self.params)
        state = acc.get_state_dict(self.model)  # all processes: gathers FSDP / DeepSpeed shards
        if use_ema:
            self.ema.restore(self.params)
        if acc.is_main_process:
            if self.config.trainable == "lora":
                state = merged_state_dict(acc.unwrap_model(self.model), state)
            state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
            self.pipe.save_pretrained(directory, transformer_state_dict=state)
        acc.wait_for_everyone()

    # ------------------------------------------------------------------------------------------ steps
    def sync_loss(self, example, prediction) -> torch.Tensor:
        """Hook for a SyncNet loss on the decoded mouth (lipsync.evaluation.syncnet's windows); not wired yet."""
        raise NotImplementedError

    def train_step(self) -> float:
        acc, cfg = self.accelerator, self.config
        losses = []
        for micro in range(cfg.gradient_accumulation_steps):
            sample = next(self.stream)
            seed = example_seed(cfg.seed, self.step, micro, acc.process_index)
            rng = np.random.default_rng(seed)
            generator = torch.Generator().manual_seed(seed)
            with acc.accumulate(self.model):
                with acc.autocast():
                    example = build_example(self.pipe, sample, cfg.objective, self.text, self.text_mask, rng,
                                            acc.device, self.weight_dtype, self.cache)
                    loss = flow_matching_loss(self.model, self.pipe, example, cfg.objective, generator,
                                              cfg.ff_num_splits)
                acc.backward(loss)
                if acc.sync_gradients and cfg.optim.max_grad_norm > 0:
                    acc.clip_grad_norm_(self.params, cfg.optim.max_grad_norm)
                self.optimizer.step()
                self.schedule.step()
                self.optimizer.zero_grad(set_to_none=True)
            losses.append(loss.detach())
        if self.ema is not None:
            self.ema.step(self.params)
        self.step += 1
        mean = torch.stack(losses).mean()
        return float(acc.gather(mean[None]).mean())

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Loss on held-out clips (fixed draws) and a rendered held-out clip (main process writes it)."""
        acc, cfg = self.accelerator, self.config
        shards = list_shards(cfg.data, "val") or list_shards(cfg.data, "train")
        clips = first_samples(shards, cfg.validation.clips)
        losses = []
        for i, sample in enumerate(clips):
            rng, generator = np.random.default_rng([cfg.seed, 7, i]), torch.Generator().manual_seed(i)
            with acc.autocast():
                example = build_example(self.pipe, sample, cfg.objective, self.text, self.text_mask, rng,
                                        acc.device, self.weight_dtype)
                losses.append(float(flow_matching_loss(self.model, self.pipe, example, cfg.objective, generator)))
        metrics = {"val/loss": float(np.mean(losses))} if losses else {}
        if clips:
            frames = render(self.pipe, clips[0], cfg.validation.render_frames, cfg.validation.num_inference_steps,
                            acc)
            if acc.is_main_process:
                write_frames(self.out / "validation" / f"step-{self.step:08d}.mp4", frames, clips[0].fps)
        return metrics

    def fit(self, max_steps: int | None = None) -> TrainResult:
        acc, cfg = self.accelerator, self.config
        max_steps = max_steps or cfg.max_steps
        started, last, history = time.monotonic(), None, []
        log_path = self.out / "train_log.jsonl"
        while self.step < max_steps:
            loss = self.train_step()
            history.append((self.step, loss))
            if acc.is_main_process and self.step % cfg.log_every == 0:
                lr = self.schedule.get_last_lr()[0]
                with log_path.open("a") as fh:
                    fh.write(json.dumps({"step": self.step, "loss": loss, "lr": lr}) + "\n")
                if cfg.report_to:
                    acc.log({"train/loss": loss, "train/lr": lr}, step=self.step)
            if cfg.validation.every and self.step % cfg.validation.every == 0:
                metrics = self.validate()
                if cfg.report_to and metrics:
                    acc.log(metrics, step=self.step)
            if self.step % cfg.checkpoint_every == 0 or self.step == max_steps:
                last = self.save()
        acc.end_training()
        return TrainResult(self.out, last, history, time.monotonic() - started)


def render(pipe: LipSyncPipeline, sample, num_frames: int, steps: int, accelerator=None) -> np.ndarray:
    """A clip's first ``8n+1 <= num_frames`` frames through the pipeline (its mouth repainted from its audio)."""
    n = max(1, (min(num_frames, sample.num_frames) - 1) // 8 * 8 + 1)
    audio = sample.audio[: int(math.ceil(n / sample.fps * 16000))]
    refs = sample.crops[np.flatnonzero(sample.present)[-1:]] if sample.present.any() else sample.crops[:1]
    context = accelerator.autocast() if accelerator is not None else torch.autocast("cpu", enabled=False)
    with context:
        out = pipe(sample.crops[:n], sample.mouth[:n].astype(np.float32) / 255.0, np.zeros(n, bool), audio,
                   sample.fps, face_id_embedding=sample.faceid if sample.faceid is not None
                   and sample.faceid.shape == (pipe.transformer.config.id_embed_dim,) else None,
                   reference_frames=refs, num_inference_steps=steps, seed=0)
    return out.frames


def write_frames(path: Path, frames: np.ndarray, fps: float) -> None:
    from lipsync.training.shards import encode_crops

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_crops(frames, fps))


def train(config: TrainConfig, resume: str | None = None, max_steps: int | None = None) -> TrainResult:
    trainer = Trainer(config)
    if resume:
        trainer.resume(resume)
    return trainer.fit(max_steps)
