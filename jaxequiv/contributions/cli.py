"""``jaxequiv contributions``: write a contributions store for a model and a data set.

Examples::

    jaxequiv contributions --data digits --model resnet18 --width 8 --out runs/digits_ig
    jaxequiv contributions --data mnist --data-root ~/data/mnist --checkpoint model/ --sites 'layer*' --out runs/ig
    jaxequiv contributions --data images.npy --labels labels.npy --checkpoint model.safetensors --arch resnet \\
        --sites 'layer*' --method ig --steps 10 --target top1 --out runs/ig

The store is built chunk by chunk in ``<out>.partial/`` and published at ``--out`` when complete; an interrupted
run with the same settings and inputs resumes (changed inputs are refused). The method options are the fields of
:class:`jaxequiv.contributions.KernelConfig`, the store options the arguments of
:func:`jaxequiv.contributions.build_store`. ``--mesh`` and the multi-process flags split each chunk's examples
over devices and processes (each process reads and writes its own rows; process 0 prints and publishes).
"""

from __future__ import annotations

from jaxequiv import cliargs

BUILTIN_MODELS = ("resnet18", "resnet34", "resnet50")
DATASETS = ("digits", "mnist", "fashion")
TARGETS = "top1, top1_fixed, softmax_top1, top1_minus_top2, sum, entropy, or a class index"


def register(subparsers) -> None:
    from jaxequiv.contributions import KernelConfig, build_store
    from jaxequiv.distributed import add_distributed_args

    p = subparsers.add_parser("contributions", description=__doc__,
                              help="hidden-unit contributions of a data set -> memory-mapped store (CODEC §1)")
    data = p.add_argument_group("data")
    data.add_argument("--data", required=True, type=cliargs.path,
                      help=f"a built-in data set ({', '.join(DATASETS)}) or a .npy file of inputs [N, *input_shape]")
    data.add_argument("--data-root", metavar="FOLDER", type=cliargs.path,
                      help="folder holding the four IDX files of --data mnist or fashion (default: where the "
                           "offline packages install them)")
    data.add_argument("--labels", metavar="NPY", type=cliargs.path,
                      help="a .npy file of N integer labels for a .npy --data (default: none, stored as -1)")
    data.add_argument("--split", choices=("test", "train"), default="test", help="split of a built-in data set")
    data.add_argument("--limit", type=int, metavar="N", help="use only the first N examples (default: all)")
    model = p.add_argument_group("model (give --model or --checkpoint)")
    src = model.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", choices=BUILTIN_MODELS, help="a built-in ResNet at random init (--width, --stem, --seed)")
    src.add_argument("--checkpoint", metavar="PATH", type=cliargs.path,
                     help="a PyTorch/safetensors checkpoint or a folder written by jaxequiv convert")
    model.add_argument("--arch", help="architecture of --checkpoint, one of jaxequiv.adapters.torch.ARCHS (default: "
                                      "its config.json's model_type)")
    model.add_argument("--width", type=int, default=64, metavar="INT", help="first-stage width of a built-in ResNet")
    model.add_argument("--stem", choices=("imagenet", "small"),
                       help="stem of a built-in ResNet (default: small below 64 px, else imagenet)")
    model.add_argument("--seed", type=cliargs.seed, default=0,
                       help="seed of a built-in ResNet's weights and of smoothgrad's noise")
    method = p.add_argument_group("method (jaxequiv.contributions.KernelConfig)")
    kernel = cliargs.add_options(method, KernelConfig, only=("method", "steps", "rule", "sigma", "step_chunk"),
                                 defaults={"step_chunk": None},
                                 help={"method": "contribution method (smoothgrad draws its noise from --seed)",
                                       "rule": "ig quadrature (left = Captum's LayerConductance)",
                                       "step_chunk": "ig path points per pass; lower = less memory (default: --steps)"})
    method.add_argument("--sites", nargs="+", default=["layer*"], metavar="PATTERN", help="site names or patterns")
    method.add_argument("--target", default="top1", help=TARGETS)
    store = p.add_argument_group("store (jaxequiv.contributions.build_store)")
    stored = cliargs.add_options(store, build_store, only=("variants", "chunk_size"))
    store.add_argument("--out", required=True, type=cliargs.path, help="store folder")
    store.add_argument("--overwrite", action="store_true", help="replace an existing store")
    store.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_distributed_args(p)
    cliargs.spell_as(p, arch="--arch", root="--data-root")
    p.set_defaults(func=lambda args: run(args, kernel + stored))


def _load_data(args):
    """``(inputs [N, ...], labels [N] or None, number of classes)`` from --data, --labels, --split and --limit."""
    import numpy as np

    from jaxequiv.io.arrays import read_npy

    if args.data_root is not None and args.data not in ("mnist", "fashion"):
        raise ValueError(f"--data-root applies to --data mnist or fashion, not {args.data}")
    if args.labels is not None and args.data in DATASETS:
        raise ValueError(f"--labels applies to a .npy --data; {args.data} brings its own labels")
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be >= 1, got {args.limit}")
    if args.data in DATASETS:
        from jaxequiv import data

        ds = data.load_digits() if args.data == "digits" else data.load_mnist(args.data, root=args.data_root)
        x, y = (ds.x_test, ds.y_test) if args.split == "test" else (ds.x_train, ds.y_train)
        n_classes = ds.num_classes
    else:
        if not args.data.endswith(".npy"):
            raise ValueError(f"--data must be one of {DATASETS} or a .npy file, got {args.data!r}")
        x = read_npy(args.data, mmap_mode="r")
        if x.ndim < 2 or len(x) == 0 or x.dtype.kind not in "biuf":
            raise ValueError(f"{args.data} must hold N >= 1 numeric examples [N, *input_shape], got {x.dtype} of "
                             f"shape {x.shape}")
        y = None if args.labels is None else read_npy(args.labels)
        if y is not None and (y.shape != (len(x),) or y.dtype.kind not in "iu" or y.min() < 0):
            raise ValueError(f"--labels must hold {len(x)} integers >= 0 (one per example of --data), got {y.dtype} "
                             f"of shape {y.shape}")
        n_classes = int(y.max()) + 1 if y is not None else 10
    if args.limit is not None:
        x = x[: args.limit]
        y = None if y is None else y[: args.limit]
    for start in range(0, len(x), 4096):  # one pass over the inputs, before any work
        block = np.asarray(x[start:start + 4096]).reshape(min(4096, len(x) - start), -1)
        bad = ~np.isfinite(block).all(axis=1)
        if bad.any():
            raise ValueError(f"{args.data}: example {start + int(np.flatnonzero(bad)[0])} contains NaN or Inf; "
                             "clean or drop it")
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


def run(args, options) -> int:
    import contextlib

    import numpy as np

    from jaxequiv.contributions import build_store
    from jaxequiv.contributions.reduce import check_variants
    from jaxequiv.distributed import from_args, is_writer
    from jaxequiv.io.files import check_output, output_lock

    mesh = from_args(args)  # first: a run of several processes starts before any JAX work
    check_variants(args.variants)  # the cheap checks before the data and the model are loaded
    check_output(args.out, overwrite=args.overwrite, marker="meta.json")
    x, y, n_classes = _load_data(args)
    net = _load_model(args, tuple(np.shape(x)[1:]), n_classes)
    target = int(args.target) if args.target.lstrip("-").isdigit() else args.target
    # one writer per store, from the first chunk to the publication (process 0 of a run of several)
    with output_lock(args.out) if is_writer() else contextlib.nullcontext():
        store = build_store(
            net, x, args.out, args.sites, labels=y, target=target,
            key=args.seed if args.method == "smoothgrad" else None, overwrite=args.overwrite,
            progress=not args.no_progress, mesh=mesh, **{n: getattr(args, n) for n in options},
            info={"data": args.data, "split": args.split, "limit": args.limit, "model": args.checkpoint or args.model,
                  # --width/--seed build a --model; a checkpoint's widths are its own (meta.json's sites)
                  **({"arch": args.arch} if args.checkpoint else {"width": args.width, "seed": args.seed})},
        )
    if is_writer():
        print(f"wrote {store!r}")
    return 0
