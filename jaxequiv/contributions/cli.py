"""``jaxequiv contributions``: write a contributions store for a model and a data set.

Examples::

    jaxequiv contributions --data digits --model resnet18 --width 8 --out runs/digits_ig
    jaxequiv contributions --data images.npy --labels labels.npy --checkpoint model.safetensors --arch resnet \\
        --sites 'layer*' --method ig --steps 10 --target top1 --out runs/ig
"""

from __future__ import annotations

import argparse

BUILTIN_MODELS = ("resnet18", "resnet34", "resnet50")
DATASETS = ("digits", "mnist", "fashion")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "contributions",
        help="hidden-unit contributions of a data set -> memory-mapped store (CODEC §1)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", required=True,
                   help=f"one of {DATASETS} (offline loaders) or a .npy file of inputs [N, *input_shape]")
    p.add_argument("--labels", help="a .npy file of N integer labels (with a .npy --data)")
    p.add_argument("--split", choices=("test", "train"), default="test", help="split of a built-in data set")
    p.add_argument("--limit", type=int, help="use only the first LIMIT examples")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", choices=BUILTIN_MODELS, help="a built-in architecture at random init (--seed)")
    src.add_argument("--checkpoint", help="a PyTorch/safetensors checkpoint or a folder written by jaxequiv convert")
    p.add_argument("--arch", help="architecture of --checkpoint (see jaxequiv.adapters.torch.ARCHS)")
    p.add_argument("--width", type=int, default=64, help="first-stage width of a built-in ResNet")
    p.add_argument("--stem", choices=("imagenet", "small"), help="ResNet stem (default: small below 64 px)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sites", nargs="+", default=["layer*"], help="site names or patterns (default: layer*)")
    p.add_argument("--method", default="ig",
                   choices=("ig", "grad_x_act", "normgrad", "normact_normgrad", "smoothgrad", "jacobian"),
                   help="contribution method (default ig; smoothgrad draws its noise from --seed)")
    p.add_argument("--steps", type=int, default=10, help="ig quadrature steps or smoothgrad draws (default 10)")
    p.add_argument("--rule", default="trapezoid",
                   choices=("trapezoid", "left", "right", "midpoint", "gauss_legendre"),
                   help="ig quadrature (default trapezoid, CODEC's; left = Captum's LayerConductance)")
    p.add_argument("--sigma", type=float, default=0.2, help="smoothgrad noise standard deviation (default 0.2)")
    p.add_argument("--target", default="top1",
                   help="top1, top1_fixed, softmax_top1, top1_minus_top2, sum, entropy, or a class index")
    p.add_argument("--variants", default="positive,negative,sum,concat", help="comma-separated reductions")
    p.add_argument("--chunk-size", type=int, default=64, help="examples per kernel call")
    p.add_argument("--step-chunk", type=int, help="ig path points per pass (lower = less memory)")
    p.add_argument("--out", required=True, help="store folder (an interrupted run with the same settings resumes)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing store")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=main)


def _load_data(args):
    from jaxequiv.io.arrays import read_npy

    if args.data in DATASETS:
        from jaxequiv import data

        ds = data.load_digits() if args.data == "digits" else data.load_mnist(args.data)
        x, y = (ds.x_test, ds.y_test) if args.split == "test" else (ds.x_train, ds.y_train)
        n_classes = ds.num_classes
    else:
        if not args.data.endswith(".npy"):
            raise ValueError(f"--data must be one of {DATASETS} or a .npy file, got {args.data!r}")
        x = read_npy(args.data, mmap_mode="r")
        y = read_npy(args.labels) if args.labels else None
        n_classes = int(y.max()) + 1 if y is not None else 10
    if args.limit is not None:
        if args.limit < 1:
            raise ValueError(f"--limit must be >= 1, got {args.limit}")
        x = x[: args.limit]
        y = None if y is None else y[: args.limit]
    return x, y, n_classes


def _load_model(args, input_shape, n_classes):
    from flax import nnx

    from jaxequiv.network import Network

    if args.checkpoint:
        from jaxequiv.adapters.torch import load_network

        return load_network(args.checkpoint, args.arch)  # eval mode, the architecture's input shape and dtype
    from jaxequiv.models import resnet

    if len(input_shape) != 3:
        raise ValueError(f"--model {args.model} takes images [H, W, C]; the data's examples have shape {input_shape}")
    stem = args.stem or ("small" if min(input_shape[:2]) < 64 else "imagenet")
    model = getattr(resnet, args.model)(num_classes=n_classes, in_channels=input_shape[-1], width=args.width,
                                        stem=stem, rngs=nnx.Rngs(args.seed))
    model.eval()
    return Network.from_module(model, input_shape)


def main(args) -> int:
    import numpy as np

    from jaxequiv.contributions import build_store
    from jaxequiv.io.files import check_output, output_lock

    check_output(args.out, overwrite=args.overwrite, marker="meta.json")
    x, y, n_classes = _load_data(args)
    net = _load_model(args, tuple(np.shape(x)[1:]), n_classes)
    target = int(args.target) if args.target.lstrip("-").isdigit() else args.target
    with output_lock(args.out):  # one writer per store, from the first chunk to the publication
        store = build_store(
            net, x, args.out, args.sites, labels=y, method=args.method, target=target, steps=args.steps,
            rule=args.rule, sigma=args.sigma, key=args.seed if args.method == "smoothgrad" else None,
            variants=[v.strip() for v in args.variants.split(",") if v.strip()], chunk_size=args.chunk_size,
            step_chunk=args.step_chunk, overwrite=args.overwrite, progress=not args.no_progress,
            info={"data": args.data, "split": args.split, "limit": args.limit, "model": args.checkpoint or args.model,
                  # --width/--seed build a --model; a checkpoint's widths are its own (meta.json's sites)
                  **({"arch": args.arch} if args.checkpoint else {"width": args.width, "seed": args.seed})},
        )
    print(f"wrote {store!r}")
    return 0
