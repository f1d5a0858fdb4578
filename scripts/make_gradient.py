"""Write the bundled synthetic MAP gradient (``data/synthetic/gradient/``): 12 Loess Plateau
twins from 200 to 700 mm whose eta1 follows ``science.GRADIENT_LAW``, their sites table
and calibration config (``science.synthetic_gradient``; synthetic, not field data).

    python scripts/make_gradient.py [--out data/synthetic/gradient] [--seed 0]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import jax

REPO = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(REPO / "data" / "synthetic" / "gradient"))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    jax.config.update("jax_enable_x64", True)
    from regv1_jax import science

    table = science.synthetic_gradient(args.out, seed=args.seed)
    print(f"wrote {table} and {len(science.GRADIENT_MAPS)} site files beside it")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
