"""``jaxequiv convert``: a PyTorch / Hugging Face checkpoint -> portable artefact (safetensors + JSON config)."""

from __future__ import annotations

import argparse
import json


def register(subparsers) -> None:
    from jaxequiv import cliargs

    p = subparsers.add_parser(
        "convert",
        help="convert a PyTorch checkpoint into a jaxequiv artefact (model.safetensors + config.json)",
        description="Load a checkpoint (.pt/.pth/.bin/.safetensors or a Hugging Face folder) into a jaxequiv model "
        "and write it as model.safetensors + config.json (published together: OUT holds the old pair or the new "
        "one, never a mix), which loads back without torch via jaxequiv.adapters.torch.load(OUT). The tokenizer "
        "files of a Hugging Face folder (tokenizer.json, vocab, merges, special tokens) are copied along.",
    )
    p.add_argument("source", type=cliargs.path, help="checkpoint file or folder")
    p.add_argument("out", type=cliargs.path, help="output folder")
    p.add_argument("--arch", help="gpt2, gpt_neox, bert, vit, resnet or transformer_lens (a HookedTransformer state "
                   "dict; needs --config) (default: config.json's model_type)")
    p.add_argument("--config", help="JSON file (or inline JSON object) with the model config fields (for "
                   "transformer_lens: the HookedTransformerConfig's fields)")
    p.add_argument("--ignore", action="append", default=[], metavar="PATTERN",
                   help="checkpoint keys to leave unused (fnmatch pattern; repeatable)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="dtype of the stored floating-point parameters")
    p.add_argument("--overwrite", action="store_true", help="replace an artefact already at OUT")
    cliargs.spell_as(p, arch="--arch", config="--config", ignore="--ignore")
    p.set_defaults(func=_convert)


def _convert(args: argparse.Namespace) -> int:
    import os

    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from jaxequiv.adapters.torch import load, save, tokenizer_files
    from jaxequiv.io.files import check_output

    config = None
    if args.config:
        text = args.config
        if not text.lstrip().startswith("{"):
            with open(text) as f:
                text = f.read()
        try:
            config = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"--config is not valid JSON ({e}); pass a JSON object or a .json file") from None
    check_output(args.out, overwrite=args.overwrite, marker="config.json")  # fail before the slow part
    model = load(args.source, args.arch, config, ignore=args.ignore, dtype=getattr(jnp, args.dtype))
    for path, variable in nnx.to_flat_state(nnx.state(model)):
        leaf = variable[...]  # checked in NumPy: a compiled jnp.isfinite would cost one compilation per shape
        if jnp.issubdtype(leaf.dtype, jnp.inexact) and not np.isfinite(np.asarray(leaf, np.float32)).all():
            raise ValueError(f"{args.source}: parameter {'.'.join(map(str, path))} contains NaN or Inf; the "
                             "checkpoint is damaged, convert an intact copy")
    carried = tokenizer_files(args.source)
    save(model, args.out, metadata={"source": os.path.basename(os.path.normpath(args.source))},
         overwrite=args.overwrite, files=carried)
    n = sum(int(v.size) for v in jax.tree_util.tree_leaves(nnx.state(model)))
    print(f"wrote {args.out}: {n:,} parameters ({type(model).__name__})"
          + (f"; tokenizer files {[os.path.basename(f) for f in carried]}" if carried else ""))
    return 0
