"""Write randomly initialised weights of any model config in the layout ``LipSyncPipeline.from_pretrained`` reads.

    python scripts/write_random_weights.py --config tiny --out /tmp/lipsync-tiny [--seed 0]

For tests of the real loading path, and for a first GPU smoke run of the ``base`` sizes before real weights
exist. (The ``base`` config writes about 9 GB in fp32, mostly the T5-XXL encoder; ``--dtype bf16`` halves it.)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from model.pipio.pipeline_lipsync import LipSyncPipeline  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="tiny", help="preset name (tiny, base) or path to a config JSON")
    parser.add_argument("--out", required=True, type=Path, help="directory to write (created)")
    parser.add_argument("--seed", type=int, default=0, help="initialisation seed")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    args = parser.parse_args(argv)
    pipe = LipSyncPipeline.from_config(args.config, init_seed=args.seed, dtype=DTYPES[args.dtype])
    pipe.save_pretrained(args.out)
    count = sum(p.numel() for m in (pipe.transformer, pipe.vae, pipe.audio_encoder, pipe.text_encoder)
                for p in m.parameters())
    print(f"wrote {args.config} weights ({count:,} parameters, seed {args.seed}) to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
