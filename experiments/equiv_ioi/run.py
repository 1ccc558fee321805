"""IOI (paper §3.2): per-head patching circuits, GetImpl by counterfactual patching, congruity between models.

    python -m experiments.equiv_ioi.run [--quick] [--out DIR]          # small LMs trained here on IOI text
    python -m experiments.equiv_ioi.run --checkpoint DIR [DIR ...]     # Hugging Face GPT-2 / Pythia folders

Offline there are no GPT-2 / Pythia weights, so the default run trains small GPT-style models on IOI-template text
(two architectures x two seeds; the seeds of one architecture train together with
:func:`experiments.stacked.fit_stacked`). With ``--checkpoint`` the folders are converted by
:mod:`jaxequiv.adapters.torch` and the prompts tokenised with each folder's ``tokenizer.json``; only prompts that
every tokenizer splits into position-aligned clean / counterfactual pairs with single-token names are kept, so
all models see the same stimuli. Every step goes through :mod:`jaxequiv.equivalence`:

* circuit: :func:`~jaxequiv.equivalence.patching_importance`: importance of head (l, h) = mean over prompts of
  KL(softmax(clean) || softmax(patched)) at the last prompt token, "patched" = the counterfactual prompt with that
  head's ``z`` taken from the clean run (all positions); the circuit = the ``circuit_frac`` heads with the
  lowest KL (those that alone restore the clean output).
* GetImpl: :func:`~jaxequiv.equivalence.get_impl`: each implementation patches every non-circuit head with
  probability 1/2 with its activation on the counterfactual prompts (``impls`` implementations per model).
* representation: residual stream (``embed`` and after every block) at the last *real* prompt token.
* :func:`~jaxequiv.equivalence.congruity` (Algorithm 1, ridge score; the comparator is a fresh implementation of
  the other model, ties count 1/2) with a bootstrap interval.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys
import time

import numpy as np

__all__ = ["IOIConfig", "QUICK", "ARCHS", "train_lms", "head_sites", "check_vocab", "head_importance", "circuit_units",
           "implementation_reprs", "congruity_matrix", "clean_corrupt_kl", "io_accuracy", "Tokenizer", "tokenize_task",
           "analyse",
           "run_experiment", "main"]

ARCHS = {
    "attn-only-2L": dict(n_layer=2, n_head=4, attn_only=True),
    "mlp-4L": dict(n_layer=4, n_head=4),
}


@dataclasses.dataclass(frozen=True)
class IOIConfig:
    n_train: int = 6000  # training sentences (models trained here)
    n_eval: int = 200  # IOI prompts of the analysis (the paper's 200)
    steps: int = 1500
    batch_size: int = 64
    d_model: int = 64
    seeds: int = 2
    answer_weight: float = 1.0  # extra weight of the answer token in the training loss
    circuit_frac: float = 0.25  # fraction of heads kept as the circuit (lowest denoising KL)
    impls: int = 10  # implementations per model (the paper's 10)
    rounds: int = 100  # congruity rounds
    lr: float = 3e-3
    seed: int = 0


QUICK = IOIConfig(n_train=200, n_eval=40, steps=20, batch_size=32, d_model=16, seeds=1, impls=3, rounds=8)


def train_lms(arch: str, ids: np.ndarray, lengths: np.ndarray, vocab_size: int, cfg: IOIConfig):
    """``cfg.seeds`` next-token language models of architecture ``arch``, trained together by
    :func:`experiments.stacked.fit_stacked` (vmapped over seeds).

    The loss is the mean next-token cross-entropy over real tokens plus ``cfg.answer_weight`` times the
    cross-entropy of the last token (the IO name), so small models learn the task within a CPU budget.

    Args:
      ids: ``[N, T]`` right-padded token ids of whole sentences; lengths ``[N]``.
    Returns:
      stacked :class:`Network` and final training losses ``[seeds]``.
    """
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    from jaxequiv.models.transformer import Transformer, TransformerConfig
    from jaxequiv.network import Network
    from experiments.stacked import fit_stacked

    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; choose from {list(ARCHS)}")
    tcfg = TransformerConfig(vocab_size=vocab_size, d_model=cfg.d_model, n_ctx=ids.shape[1], **ARCHS[arch])
    net = Network.stack([Network.from_module(Transformer(tcfg, nnx.Rngs(cfg.seed * 100 + s)), (None,), "int")
                         for s in range(cfg.seeds)])

    def loss_fn(p, x, n):
        logits = net.apply(p, x[:, :-1])
        ll = jnp.take_along_axis(jax.nn.log_softmax(logits), x[:, 1:, None], -1)[..., 0]  # [B, T-1]
        pos = jnp.arange(x.shape[1] - 1)[None]
        valid = pos < (n[:, None] - 1)
        answer = pos == (n[:, None] - 2)  # predicts the last real token (the IO name)
        return -(ll * valid).sum() / valid.sum() - cfg.answer_weight * (ll * answer).sum() / answer.sum()

    params, losses = fit_stacked(net.params, loss_fn, (ids, lengths), steps=cfg.steps, batch_size=cfg.batch_size,
                                 optimizer=optax.adam(cfg.lr), seed=cfg.seed)
    return net.replace_params(params), losses[-1]


def head_sites(net) -> tuple[list[str], list[str]]:
    """Per-head ``*.z`` site names (by layer) and residual site names (``embed`` + block outputs) of ``net``."""
    names = list(net.sites(1, tokens=2))
    z = [n for n in names if n.endswith(".z")]
    resid = ["embed", *(n for n in names if re.fullmatch(r"(h|layers)\.\d+", n))]
    if not z:
        raise ValueError(f"no per-head '*.z' sites in this model; sites are {names}")
    return z, resid


def check_vocab(ids: np.ndarray, vocab_size: int, what: str = "prompt") -> None:
    """Raise ``ValueError`` if a token id does not exist in a model with ``vocab_size`` tokens."""
    top = int(ids.max(initial=0))
    if top >= vocab_size:
        raise ValueError(
            f"{what} token id {top} is outside the model's vocabulary of {vocab_size}: the model does not cover "
            "the task's tokens; tokenise with the model's own tokenizer (tokenizer.json in the checkpoint folder)"
        )


def head_importance(net, clean, corrupt, last) -> np.ndarray:
    """``[L, H]`` mean KL(clean || corrupt-with-head-patched-from-clean) at the last prompt token
    (:func:`jaxequiv.equivalence.patching_importance`, ``mode="denoise"``, all heads in one batched call); a low
    value means the head alone carries the clean behaviour."""
    from jaxequiv import equivalence as eq

    z_names, _ = head_sites(net)
    scores = eq.patching_importance(net, clean, corrupt, sites=z_names, positions=last)
    return np.stack([np.asarray(scores[k]) for k in z_names])


def circuit_units(kl: np.ndarray, frac: float, z_names: list[str]) -> list[str]:
    """The circuit: the ``frac`` heads (at least one) whose clean activation restores the clean output best, i.e.
    the smallest denoising KL in ``kl [L, H]`` (:func:`head_importance`), as unit specs ``"h.3.attn.z[0,5]"``."""
    k = max(1, int(round(frac * kl.size)))
    top = np.zeros(kl.size, bool)
    top[np.argsort(kl.ravel(), kind="stable")[:k]] = True
    top = top.reshape(kl.shape)
    return [f"{z}[{','.join(map(str, np.flatnonzero(row)))}]" for z, row in zip(z_names, top) if row.any()]


def implementation_reprs(net, clean, corrupt, lengths, circuit: list[str], count: int, seed: int):
    """The model's representation ``[N, D]`` and ``count`` GetImpl implementations ``[count, N, D]``
    (:func:`jaxequiv.equivalence.get_impl`): each patches every head outside ``circuit`` with probability 1/2 with
    its activation on the counterfactual prompts; representation = residual stream (``embed`` and every block)
    at the last real prompt token."""
    from jaxequiv import equivalence as eq

    z_names, resid = head_sites(net)
    base = eq.get_impl(net, clean, read=resid, n=1, lengths=lengths)[0]
    impls = eq.get_impl(net, clean, corrupt, read=resid, key=seed, n=count, circuit=circuit, candidates=z_names,
                        lengths=lengths)
    return np.asarray(base), np.asarray(impls)


def congruity_matrix(models: dict, rounds: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """CONGRUITY (:func:`jaxequiv.equivalence.congruity`, ridge score) of every pair of ``{name: (base, impls)}``;
    returns the symmetric ``[A, A]`` scores and their 95% bootstrap intervals ``[A, A, 2]``."""
    import jax

    from jaxequiv import equivalence as eq

    names = list(models)
    keys = jax.random.split(jax.random.key(seed), len(names) ** 2)
    mat, ci = np.zeros((len(names),) * 2), np.zeros((len(names),) * 2 + (2,))
    for i, a in enumerate(names):
        for j, b in enumerate(names[i:], i):  # Algorithm 1 is symmetric in the two models: score i <= j, mirror
            r = eq.congruity(*models[a], *models[b], key=keys[i * len(names) + j], n_rounds=rounds)
            mat[i, j] = mat[j, i] = r.score
            ci[i, j] = ci[j, i] = (r.ci_low, r.ci_high)
    return mat, ci


def clean_corrupt_kl(net, clean, corrupt, last) -> float:
    """Mean KL(softmax(clean) || softmax(counterfactual)) at the last prompt token: how far the counterfactual
    moves the output before any head is patched back (the scale of :func:`head_importance`)."""
    import jax
    import jax.numpy as jnp

    rows = np.arange(len(last))
    lp, lq = (jax.nn.log_softmax(net.apply(net.params, jnp.asarray(x))[rows, last]) for x in (clean, corrupt))
    return float(jnp.mean(jnp.sum(jnp.exp(lp) * (lp - lq), -1)))


def io_accuracy(net, clean, last, io_ids, s_ids) -> tuple[float, float]:
    """Fraction of prompts whose IO-name logit beats the S-name logit at the last token, and the mean logit
    difference."""
    import jax
    import jax.numpy as jnp

    logits = np.asarray(jax.jit(net.apply)(net.params, jnp.asarray(clean)))[np.arange(len(last)), last]
    diff = logits[np.arange(len(last)), io_ids] - logits[np.arange(len(last)), s_ids]
    return float((diff > 0).mean()), float(diff.mean())


class Tokenizer:
    """Tokenises IOI prompts for one model: the checkpoint's ``tokenizer.json`` (Hugging Face ``tokenizers``) when
    the folder has one, else the built-in word-level :class:`~jaxequiv.data.ioi.WordVocab`."""

    def __init__(self, folder: str | None = None):
        from jaxequiv.data.ioi import WordVocab

        path = os.path.join(folder, "tokenizer.json") if folder else None
        self.hf = None
        if path and os.path.exists(path):
            from tokenizers import Tokenizer as HFTokenizer

            self.hf = HFTokenizer.from_file(path)
            self.source = path
        else:
            self.vocab = WordVocab.for_ioi()
            self.source = "built-in word-level IOI vocabulary"

    def encode(self, text: str) -> list[int]:
        if self.hf is None:
            return [int(i) for i in self.vocab.encode([text])[0][0]]
        enc = self.hf.encode(text, add_special_tokens=False)
        unk = self.hf.token_to_id("[UNK]") if self.hf.token_to_id("[UNK]") is not None else self.hf.token_to_id("<unk>")
        if unk is not None and unk in enc.ids:
            raise ValueError(f"tokenizer {self.source} has no token for part of {text!r}: the model's vocabulary does "
                             "not cover the task's tokens")
        return list(enc.ids)

    def name_id(self, name: str) -> int | None:
        """Id of `` name`` (with its leading space) if it is one token, else ``None``."""
        ids = self.encode(" " + name) if self.hf is not None else self.encode(name)
        return ids[0] if len(ids) == 1 else None


def tokenize_task(data, tokenizers: list[Tokenizer]):
    """Token ids of the prompts every tokenizer can use for patching (clean and counterfactual of equal length,
    IO and S names single tokens), the same prompts for all models.

    Returns ``(kept indices, [per tokenizer: dict(clean, corrupt [N, T], lengths [N], io, s [N])])``.
    """
    keep, per = [], [dict(clean=[], corrupt=[], io=[], s=[]) for _ in tokenizers]
    for i, (p, c, io, s) in enumerate(zip(data.prompts, data.counterfactuals, data.io, data.s)):
        rows = []
        for tok in tokenizers:
            a, b, io_id, s_id = tok.encode(p), tok.encode(c), tok.name_id(io), tok.name_id(s)
            if len(a) != len(b) or io_id is None or s_id is None:
                break
            rows.append((a, b, io_id, s_id))
        else:
            keep.append(i)
            for d, row in zip(per, rows):
                for field, value in zip(("clean", "corrupt", "io", "s"), row):
                    d[field].append(value)
    if len(keep) < 10:
        raise ValueError(f"only {len(keep)} of {len(data)} IOI prompts tokenise into position-aligned clean / "
                         "counterfactual pairs with single-token names for every model; use more prompts")
    out = []
    for d in per:
        lengths = np.array([len(a) for a in d["clean"]], np.int32)
        clean = np.zeros((len(keep), lengths.max()), np.int32)
        corrupt = np.zeros_like(clean)
        for r, (a, b) in enumerate(zip(d["clean"], d["corrupt"])):
            clean[r, : len(a)], corrupt[r, : len(b)] = a, b
        out.append(dict(clean=clean, corrupt=corrupt, lengths=lengths, io=np.array(d["io"]), s=np.array(d["s"])))
    return keep, out


def analyse(name: str, net, task: dict, cfg: IOIConfig, seed: int, log=print):
    """Circuit, implementations and IO accuracy of one model on tokenised ``task``; returns
    ``(base, impls, summary)``."""
    infos = net.sites(1, tokens=2)
    if "logits" in infos:
        for key in ("clean", "corrupt"):
            check_vocab(task[key], int(infos["logits"].shape[-1]), key)
    last = task["lengths"] - 1
    acc, diff = io_accuracy(net, task["clean"], last, task["io"], task["s"])
    kl = clean_corrupt_kl(net, task["clean"], task["corrupt"], last)
    imp = head_importance(net, task["clean"], task["corrupt"], last)
    z_names, _ = head_sites(net)
    circuit = circuit_units(imp, cfg.circuit_frac, z_names)
    base, impls = implementation_reprs(net, task["clean"], task["corrupt"], task["lengths"], circuit, cfg.impls, seed)
    log(f"{name}: IO-vs-S accuracy {acc:.2f}, logit diff {diff:.2f}, circuit {circuit}")
    return base, impls, {"accuracy": acc, "logit_diff": diff, "kl_clean_corrupt": kl,
                         "head_importance": imp.tolist(), "circuit": circuit, "repr_dim": int(base.shape[-1])}


def run_experiment(cfg: IOIConfig, out_dir: str, checkpoints: list[str] | None = None, log=print) -> dict:
    """Train (or load) the models, find circuits, sample implementations, score congruity; write
    ``results.json`` and ``congruity.png`` into ``out_dir``.

    Args:
      checkpoints: Hugging Face GPT-2 / Pythia (GPT-NeoX) folders (or any folder :func:`jaxequiv.adapters.torch.load`
        reads) to compare instead of training models here.
    """
    from experiments.equiv_toy.run import _heatmaps

    from jaxequiv.io.files import write_json
    from jaxequiv.io.provenance import provenance
    from jaxequiv.data.ioi import ioi_prompts

    t0 = time.time()
    timings: dict[str, float] = {}

    def lap(name: str, since: float) -> float:
        timings[name] = round(timings.get(name, 0.0) + time.time() - since, 1)
        return time.time()

    os.makedirs(out_dir, exist_ok=True)
    ev = ioi_prompts(cfg.n_eval, seed=cfg.seed + 2)
    models, results = {}, {"config": dataclasses.asdict(cfg), "models": {}}
    if checkpoints:
        from jaxequiv.adapters.torch import load_network

        toks = [Tokenizer(c) for c in checkpoints]
        keep, tasks = tokenize_task(ev, toks)
        results["prompts_kept"] = len(keep)
        for k, (folder, tok, task) in enumerate(zip(checkpoints, toks, tasks)):
            name = os.path.basename(os.path.normpath(folder))
            net = load_network(folder)
            base, impls, summary = analyse(name, net, task, cfg, cfg.seed + k, log)
            models[name] = (base, impls)
            results["models"][name] = {"checkpoint": os.path.abspath(folder), "tokenizer": tok.source, **summary}
    else:
        tok = Tokenizer()
        vocab = tok.vocab
        train = ioi_prompts(cfg.n_train, seed=cfg.seed + 1)
        ids, lengths = vocab.encode(train.sentences())
        _, (task,) = tokenize_task(ev, [tok])
        for arch in ARCHS:
            t = time.time()
            stack, loss = train_lms(arch, ids, lengths, len(vocab), cfg)
            t = lap(f"training {arch}", t)
            for s in range(cfg.seeds):
                name = f"{arch} seed{s}"
                base, impls, summary = analyse(name, stack[s], task, cfg, cfg.seed + s, log)
                models[name] = (base, impls)
                results["models"][name] = {"train_loss": float(loss[s]), **summary}
            lap("circuits and implementations", t)
    names = list(models)
    t = time.time()
    mat, ci = congruity_matrix(models, cfg.rounds, cfg.seed + 7)
    lap("congruity", t)
    results["names"], results["congruity"], results["congruity_ci95"] = names, mat.tolist(), ci.tolist()
    results["seconds"] = round(time.time() - t0, 1)
    results["timings_s"] = {**timings, "total": results["seconds"]}
    results["provenance"] = provenance(
        cfg, seeds={"run": cfg.seed, "model init": [cfg.seed * 100 + s for s in range(cfg.seeds)]}, started=t0)
    _heatmaps(os.path.join(out_dir, "congruity.png"), [("IOI congruity", mat)], names)
    write_json(os.path.join(out_dir, "results.json"), results)
    log(f"congruity:\n{np.round(mat, 2)}\ndone in {results['seconds']}s")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny run for tests")
    parser.add_argument("--checkpoint", nargs="+", metavar="DIR",
                        help="Hugging Face GPT-2 / Pythia folders to compare (instead of training models here)")
    parser.add_argument("--out", default=None,
                        help="output folder (default: results/full, results/quick or results/checkpoints here)")
    args = parser.parse_args(argv)
    preset = "checkpoints" if args.checkpoint else "quick" if args.quick else "full"
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", preset)
    run_experiment(QUICK if args.quick else IOIConfig(), out, checkpoints=args.checkpoint)
    return 0


if __name__ == "__main__":
    sys.exit(main())
