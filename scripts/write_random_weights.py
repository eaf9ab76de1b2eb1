"""Write randomly initialised pipio weights of any model config (``lipsync.model.pipio.random_weights``), in the
layout ``LipSyncPipeline.from_pretrained`` reads; ``lipsync weights random ENGINE DIR`` does the same for every
engine at its small or published sizes, this script adds any config JSON and the dtype.

    python scripts/write_random_weights.py --config tiny --out /tmp/lipsync-tiny [--seed 0]

For tests of the real loading path, and for a first GPU smoke run of the ``base`` sizes before real weights
exist. (The ``base`` config writes about 9 GB in fp32, mostly the T5-XXL encoder; ``--dtype bf16`` halves it.)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from lipsync.model.devices import TORCH_DTYPES, torch_dtype  # noqa: E402
from lipsync.model.pipio.random_weights import write_random_weights  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="tiny", help="preset name (tiny, base) or path to a config JSON")
    parser.add_argument("--out", required=True, type=Path, help="directory to write (created)")
    parser.add_argument("--seed", type=int, default=0, help="initialisation seed")
    parser.add_argument("--dtype", choices=sorted(TORCH_DTYPES), default="fp32")
    args = parser.parse_args(argv)
    write_random_weights(args.out, args.config, seed=args.seed, dtype=torch_dtype(args.dtype))
    size = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
    print(f"wrote RANDOM {args.config} weights ({size / 1e6:,.1f} MB, seed {args.seed}) to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
