"""IOI (paper §3.2): per-head patching circuits, GetImpl by counterfactual patching, congruity between models.

    python -m experiments.equiv_ioi.run [--quick] [--out DIR]

Offline there are no GPT-2 / Pythia weights, so the run trains small GPT-style models on IOI-template text
(two architectures x two seeds; the seeds of one architecture train together, vmapped). The analysis functions
take any stacked-or-single :class:`~jaxequiv.network.Network` of jaxequiv's :class:`Transformer` with token ids,
so GPT-2 / Pythia checkpoints converted by :mod:`jaxequiv.adapters.torch` go through the same code (head sites
``h.{i}.attn.z`` or ``layers.{i}.attention.z`` are found by name).

* circuit: importance of head (l, h) = mean over prompts of KL(softmax(clean) || softmax(patched)) at the last
  prompt token, where "patched" runs the counterfactual prompt with that head's z taken from the clean run (all
  positions); all heads at once, vmapped over one-hot head masks. The circuit = the top ``circuit_frac`` heads.
* GetImpl: an implementation patches a random half of the non-circuit heads with their activations on the
  counterfactual prompts.
* representation: residual stream (``embed`` and after every block) at the last prompt token, concatenated.
* congruity (Algorithm 1): n repeats of fresh implementations h1*, h2*; s += [R(h1->h1*) <= R(h1->h2*)] +
  [R(h2->h2*) <= R(h2->h1*)] with R the held-out sqrt-clipped ridge score; ``1 - |s/n - 1|``. The comparator is
  the other model's implementation h2* (the spec leaves h2 vs h2* open), so a model compared with itself uses two
  different implementations and scores ~1 instead of the degenerate 0 of R(h1->h1) = 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
import time

import numpy as np

__all__ = ["IOIConfig", "QUICK", "ARCHS", "train_lms", "head_sites", "head_importance", "implementation_reprs",
           "congruity", "run_experiment", "main"]

ARCHS = {
    "attn-only-2L": dict(n_layer=2, n_head=4, attn_only=True),
    "mlp-4L": dict(n_layer=4, n_head=4),
}


@dataclasses.dataclass(frozen=True)
class IOIConfig:
    n_train: int = 6000
    n_eval: int = 200
    steps: int = 1500
    batch_size: int = 64
    d_model: int = 64
    seeds: int = 2
    circuit_frac: float = 0.25
    repeats: int = 20
    lr: float = 3e-3
    seed: int = 0


QUICK = IOIConfig(n_train=400, n_eval=60, steps=60, d_model=16, repeats=6)


def train_lms(arch: str, ids: np.ndarray, lengths: np.ndarray, vocab_size: int, cfg: IOIConfig):
    """``cfg.seeds`` next-token language models of architecture ``arch``, trained together (vmapped over seeds).

    Args:
      ids: ``[N, T]`` right-padded token ids; lengths ``[N]``.
    Returns:
      stacked :class:`Network` and final training losses ``[seeds]``.
    """
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    from jaxequiv.models.transformer import Transformer, TransformerConfig
    from jaxequiv.network import Network

    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; choose from {list(ARCHS)}")
    tcfg = TransformerConfig(vocab_size=vocab_size, d_model=cfg.d_model, n_ctx=ids.shape[1], **ARCHS[arch])
    net = Network.stack([Network.from_module(Transformer(tcfg, nnx.Rngs(s)), (None,), "int") for s in range(cfg.seeds)])
    tx = optax.adam(cfg.lr)
    opt = jax.vmap(tx.init)(net.params)
    x_all, len_all = jnp.asarray(ids), jnp.asarray(lengths)

    def loss_fn(p, x, n):
        logits = net.apply(p, x[:, :-1])
        valid = jnp.arange(x.shape[1] - 1)[None] < (n[:, None] - 1)
        ll = jnp.take_along_axis(jax.nn.log_softmax(logits), x[:, 1:, None], -1)[..., 0]
        return -(ll * valid).sum() / valid.sum()

    @jax.jit
    def chunk(params, opt, key):
        def step(carry, k):
            params, opt = carry
            idx = jax.random.randint(k, (cfg.batch_size,), 0, x_all.shape[0])

            def one(p, o):
                loss, g = jax.value_and_grad(loss_fn)(p, x_all[idx], len_all[idx])
                upd, o = tx.update(g, o, p)
                return optax.apply_updates(p, upd), o, loss

            params, opt, loss = jax.vmap(one)(params, opt)
            return (params, opt), loss

        (params, opt), losses = jax.lax.scan(step, (params, opt), jax.random.split(key, 20))
        return params, opt, losses[-1]

    params, key = net.params, jax.random.PRNGKey(cfg.seed)
    for i in range(max(cfg.steps // 20, 1)):
        params, opt, loss = chunk(params, opt, jax.random.fold_in(key, i))
    return net.replace_params(params), np.asarray(loss)


def head_sites(net) -> tuple[list[str], list[str]]:
    """Per-head ``*.z`` site names (by layer) and residual site names (``embed`` + block outputs) of ``net``."""
    names = list(net.sites(1, tokens=2))
    z = [n for n in names if n.endswith(".z")]
    resid = ["embed", *(n for n in names if re.fullmatch(r"(h|layers)\.\d+", n))]
    if not z:
        raise ValueError(f"no per-head '*.z' sites in this model; sites are {names}")
    return z, resid


def _last(logits_or_acts, last):
    return logits_or_acts[np.arange(len(last)), last]


def head_importance(net, clean, corrupt, last, vocab_size: int | None = None):
    """``[L, H]`` mean KL(clean || corrupt-with-head-patched-from-clean) at the last prompt token.

    Args:
      net: an unstacked :class:`Network` of a jaxequiv Transformer.
      clean, corrupt: ``[N, T]`` token ids of prompts and counterfactuals (same positions); last ``[N]``.
    """
    import jax
    import jax.numpy as jnp

    from jaxequiv.sites import Replace, run

    if vocab_size is not None:
        top = int(max(clean.max(), corrupt.max()))
        if top >= vocab_size:
            raise ValueError(f"token id {top} is outside the model's vocabulary of {vocab_size}; use the model's tokenizer")
    z_names, _ = head_sites(net)
    clean, corrupt, last = jnp.asarray(clean), jnp.asarray(corrupt), jnp.asarray(last)
    logits, cap = run(net.apply, net.params, clean, capture=z_names)
    p_clean = jax.nn.log_softmax(_last(logits, last))
    n_layer, n_head = len(z_names), cap[z_names[0]].shape[2]
    masks = jnp.eye(n_layer * n_head, dtype=bool).reshape(-1, n_layer, n_head)

    def kl(mask):
        edits = {k: Replace(cap[k], where=mask[i][None, None, :, None]) for i, k in enumerate(z_names)}
        out, _ = run(net.apply, net.params, corrupt, edits=edits)
        p = jax.nn.log_softmax(_last(out, last))
        return (jnp.exp(p_clean) * (p_clean - p)).sum(-1).mean()

    return np.asarray(jax.lax.map(kl, masks)).reshape(n_layer, n_head)


def implementation_reprs(net, clean, corrupt, last, circuit, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The model's representation ``[N, D]`` and ``count`` GetImpl implementations ``[count, N, D]``.

    Each implementation patches a random half of the heads outside ``circuit`` (``[L, H]`` bool) with their
    activations on the counterfactual prompts.
    """
    import jax
    import jax.numpy as jnp

    from jaxequiv.sites import Replace, run

    z_names, resid = head_sites(net)
    clean, corrupt, last = jnp.asarray(clean), jnp.asarray(corrupt), jnp.asarray(last)
    _, cf = run(net.apply, net.params, corrupt, capture=z_names)
    rng = np.random.default_rng(seed)
    outside = ~np.asarray(circuit)
    masks = outside[None] & (rng.random((count, *outside.shape)) < 0.5)

    def reprs(mask):
        edits = {k: Replace(cf[k], where=mask[i][None, None, :, None]) for i, k in enumerate(z_names)}
        _, cap = run(net.apply, net.params, clean, capture=resid, edits=edits)
        return jnp.concatenate([_last(cap[k], last) for k in resid], -1)

    base = reprs(jnp.zeros_like(jnp.asarray(masks[0])))
    return np.asarray(base), np.asarray(jax.lax.map(reprs, jnp.asarray(masks)))


def congruity(base1, impls1, base2, impls2, repeats: int, seed: int) -> float:
    """Algorithm 1 with the reference's ridge score as similarity (higher = closer); see module docstring."""
    import jax

    from jaxequiv import similarity as sim

    rng = np.random.default_rng(seed)
    same = base1 is base2
    s = 0
    for r in range(repeats):
        k = jax.random.PRNGKey(seed * 1000 + r)
        i, j = rng.choice(len(impls1), 2, replace=False)  # own implementation, and (same model) the comparator
        if not same:
            j = rng.integers(len(impls2))
        own1, other1 = (float(sim.ridge_score(base1, y, key=k, sqrt=True)) for y in (impls1[i], impls2[j]))
        i2, j2 = rng.choice(len(impls2), 2, replace=False)
        if not same:
            i2 = rng.integers(len(impls1))
        own2, other2 = (float(sim.ridge_score(base2, y, key=k, sqrt=True)) for y in (impls2[j2], impls1[i2]))
        s += (own1 <= other1) + (own2 <= other2)
    return 1 - abs(s / repeats - 1)


def run_experiment(cfg: IOIConfig, out_dir: str, log=print) -> dict:
    """Train the models, find circuits, sample implementations, score congruity; write results and a figure."""
    from jaxequiv.data.ioi import WordVocab, ioi_prompts

    t0 = time.time()
    os.makedirs(out_dir, exist_ok=True)
    vocab = WordVocab.for_ioi()
    train = ioi_prompts(cfg.n_train, seed=cfg.seed + 1)
    ids, lengths = vocab.encode(train.sentences())
    ev = ioi_prompts(cfg.n_eval, seed=cfg.seed + 2)
    t_max = ids.shape[1]
    clean, lens = vocab.encode(ev.prompts, length=t_max)
    corrupt, _ = vocab.encode(ev.counterfactuals, length=t_max)
    last = lens - 1
    io_ids, s_ids = vocab.ids(ev.io), vocab.ids(ev.s)
    models, results = {}, {"config": dataclasses.asdict(cfg), "models": {}}
    for arch in ARCHS:
        stack, loss = train_lms(arch, ids, lengths, len(vocab), cfg)
        for s in range(cfg.seeds):
            net = stack[s]
            logits = np.asarray(net.apply(net.params, clean))[np.arange(len(last)), last]
            diff = logits[np.arange(len(last)), io_ids] - logits[np.arange(len(last)), s_ids]
            imp = head_importance(net, clean, corrupt, last, len(vocab))
            k = max(1, int(round(cfg.circuit_frac * imp.size)))
            circuit = np.zeros(imp.size, bool)
            circuit[np.argsort(imp.ravel())[-k:]] = True
            base, impls = implementation_reprs(net, clean, corrupt, last, circuit.reshape(imp.shape), 10, cfg.seed + s)
            name = f"{arch} seed{s}"
            models[name] = (base, impls)
            results["models"][name] = {"train_loss": float(loss[s]), "logit_diff": float(diff.mean()),
                                       "accuracy": float((diff > 0).mean()), "head_importance": imp.tolist(),
                                       "circuit": circuit.reshape(imp.shape).tolist()}
            log(f"{name}: loss {loss[s]:.3f}, IO-vs-S accuracy {(diff > 0).mean():.2f}, logit diff {diff.mean():.2f}")
    names = list(models)
    mat = np.array([[congruity(*models[a], *models[b], cfg.repeats, cfg.seed + 7 * i + j) for j, b in enumerate(names)]
                    for i, a in enumerate(names)])
    results["names"], results["congruity"] = names, mat.tolist()
    results["seconds"] = round(time.time() - t0, 1)
    from experiments.equiv_toy.run import _heatmaps, _write_atomic

    _heatmaps(os.path.join(out_dir, "congruity.png"), [("IOI congruity", mat)], names)
    _write_atomic(os.path.join(out_dir, "results.json"), json.dumps(results, indent=1))
    log(f"congruity:\n{np.round(mat, 2)}\ndone in {results['seconds']}s")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = parser.parse_args(argv)
    run_experiment(QUICK if args.quick else IOIConfig(), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
