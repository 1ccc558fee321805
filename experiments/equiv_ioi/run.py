"""IOI (paper §3.2): model families, their representational similarity, per-head patching circuits, GetImpl,
congruity within and across families, and its sensitivity to GetImpl's settings and to the measure.

    python -m experiments.equiv_ioi.run [--quick] [--out DIR]          # two families of small LMs trained here
    python -m experiments.equiv_ioi.run --checkpoint DIR [DIR ...]     # Hugging Face GPT-2 / Pythia folders

Offline there are no GPT-2 / Pythia weights, so the default run trains two *families* of small GPT-style
language models on a synthetic corpus in which IOI is one task among several (:func:`jaxequiv.data.ioi.task_corpus`):
each family is one architecture at several sizes and seeds, trained on its own task mix (:data:`FAMILIES`), as
GPT-2 (learned positions, sequential blocks, WebText) and Pythia (rotary, parallel blocks, the Pile) differ. The
seeds of one size train together with :func:`experiments.stacked.fit_stacked`. With ``--checkpoint`` the folders
are converted by :mod:`jaxequiv.adapters.torch`, tokenised with each folder's ``tokenizer.json`` (only prompts
that every tokenizer splits into position-aligned clean / counterfactual pairs with single-token names are
kept) and grouped into families by the folder name's first part (``gpt2-medium`` -> ``gpt2``).

* similarity: linear CKA and ridge R^2 between the models' last-token residual streams, within vs across
  families (exact permutation test over family labels, prompt-bootstrap interval of the difference).
* circuit: :func:`~jaxequiv.equivalence.patching_importance`: importance of head (l, h) = mean over prompts of
  KL(softmax(clean) || softmax(patched)) at the last prompt token, "patched" = the counterfactual prompt with that
  head's ``z`` taken from the clean run (all positions); the circuit = the ``circuit_frac`` heads with the
  lowest KL (those that alone restore the clean output).
* GetImpl: :func:`~jaxequiv.equivalence.get_impl`: each implementation patches every non-circuit head with
  probability ``p`` with its activation on the counterfactual prompts (or mean / resample ablation, ``source``).
* representation: residual stream (``embed`` and after every block) at the last *real* prompt token.
* :func:`~jaxequiv.equivalence.congruity_matrix` (Algorithm 1, ridge score on one fixed 90/10 split of the
  prompts, so each (model, implementation) pair is fitted once; the comparator is a fresh implementation of the
  other model, ties count 1/2), family means with a bootstrap interval over rounds, and a
  one-factor-at-a-time sweep of ``p``, ``circuit_frac``, ``source`` and the measure.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
import re
import sys
import time

import numpy as np

__all__ = ["IOIConfig", "QUICK", "WIDE", "FAMILIES", "model_specs", "train_lms", "head_sites", "check_vocab",
           "head_importance", "circuit_units", "implementation_reprs", "similarity_matrices", "family_contrast",
           "cka_bootstrap", "impl_similarity", "family_means", "clean_corrupt_kl", "io_accuracy", "task_accuracy", "Tokenizer",
           "tokenize_task", "analyse", "run_experiment", "main"]

# Two families, differing as GPT-2 and Pythia do: architecture (positions, block layout) and training corpus
# (task mix, different facts about the same names, and overlapping but different IOI templates, indices into
# jaxequiv.data.ioi.TEMPLATES; the evaluation prompts use all ten).
FAMILIES = {
    "gpt": dict(arch=dict(positional="learned"),
                mix={"ioi": 0.4, "induction": 0.3, "counting": 0.3}, fact_seed=0, templates=[0, 1, 2, 3, 4, 5, 8]),
    "neox": dict(arch=dict(naming="neox", positional="rotary", parallel_residual=True),
                 mix={"ioi": 0.4, "facts": 0.3, "induction": 0.3}, fact_seed=1, templates=[3, 4, 5, 6, 7, 8, 9]),
}


@dataclasses.dataclass(frozen=True)
class IOIConfig:
    n_train: int = 4000  # training sentences per family corpus
    n_eval: int = 200  # IOI prompts of the analysis (the paper's 200)
    steps: int = 800
    batch_size: int = 48
    sizes: tuple = ((2, 32), (3, 40))  # (layers, d_model) of each family member ("small", "medium")
    n_ctx: int = 24  # context of the models (training sentences and prompts are at most 20 words)
    n_head: int = 4
    seeds: int = 2  # per size
    answer_weight: float = 1.0  # extra weight of the answer (last) token in the training loss
    circuit_frac: float = 0.25  # fraction of heads kept as the circuit (lowest denoising KL)
    p: float = 0.5  # GetImpl's patch probability of a non-circuit head
    source: str = "counterfactual"  # GetImpl's patch source
    impls: int = 10  # implementations per model (the paper's 10)
    rounds: int = 100  # congruity rounds (default setting)
    sweep_rounds: int = 100  # congruity rounds of each sensitivity setting
    sweep_p: tuple = (0.1, 0.3, 0.7, 0.9)
    sweep_circuit_frac: tuple = (0.1, 0.5)
    sweep_source: tuple = ("mean", "resample")
    sweep_measure: tuple = ("linear_cka", "procrustes", "cca")
    ridge_splits: int = 5  # random 90/10 splits averaged in the similarity matrix
    n_boot: int = 1000
    lr: float = 3e-3
    seed: int = 0


# the paper's representations have far more dimensions than prompts (D = 9,984-84,480 for 200); these wider
# models (D = 384 and 768) test whether the measure's regime moves congruity, at the default GetImpl setting and
# with resample ablation
WIDE = IOIConfig(sizes=((2, 128), (3, 192)), sweep_p=(), sweep_circuit_frac=(), sweep_source=("resample",),
                 sweep_measure=("linear_cka",))

QUICK = IOIConfig(n_train=600, n_eval=60, steps=150, batch_size=32, sizes=((1, 16),), seeds=2, impls=4, rounds=10,
                  sweep_rounds=10, sweep_p=(), sweep_circuit_frac=(), sweep_source=("mean",),
                  sweep_measure=("linear_cka",), ridge_splits=2, n_boot=200)


def model_specs(cfg: IOIConfig) -> list[tuple[str, str, dict]]:
    """``(family, size label, TransformerConfig keywords)`` of every trained size (each trained with
    ``cfg.seeds`` seeds)."""
    return [(fam, f"{n_layer}L{d}", dict(n_layer=n_layer, d_model=d, n_head=cfg.n_head, **spec["arch"]))
            for fam, spec in FAMILIES.items() for n_layer, d in cfg.sizes]


def _init_seed(cfg: IOIConfig, spec_index: int) -> int:
    """First initialisation seed of the ``spec_index``-th trained size: every model has its own, so that no two
    models (e.g. the same size in both families) start from the same embedding."""
    return cfg.seed * 1000 + 100 * spec_index


def train_lms(spec: dict, ids: np.ndarray, lengths: np.ndarray, vocab_size: int, cfg: IOIConfig, init: int = 0):
    """``cfg.seeds`` next-token language models with :class:`~jaxequiv.models.transformer.TransformerConfig`
    keywords ``spec`` and initialisation seeds ``init, init + 1, ...``, trained together by
    :func:`experiments.stacked.fit_stacked` (vmapped over seeds).

    The loss is the mean next-token cross-entropy over real tokens plus ``cfg.answer_weight`` times the
    cross-entropy of the last token (each task's answer), so small models learn the tasks within a CPU budget.

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

    if ids.shape[1] > cfg.n_ctx:
        raise ValueError(f"train_lms: sentences of {ids.shape[1]} tokens exceed cfg.n_ctx={cfg.n_ctx}; raise n_ctx")
    try:
        tcfg = TransformerConfig(vocab_size=vocab_size, n_ctx=cfg.n_ctx, **spec)
    except TypeError as e:
        raise ValueError(f"train_lms: {spec!r} is not a set of TransformerConfig keywords ({e})") from None
    net = Network.stack([Network.from_module(Transformer(tcfg, nnx.Rngs(init + s)), (None,), "int")
                         for s in range(cfg.seeds)])

    def loss_fn(p, x, n):
        logits = net.apply(p, x[:, :-1])
        ll = jnp.take_along_axis(jax.nn.log_softmax(logits), x[:, 1:, None], -1)[..., 0]  # [B, T-1]
        pos = jnp.arange(x.shape[1] - 1)[None]
        valid = pos < (n[:, None] - 1)
        answer = pos == (n[:, None] - 2)  # predicts the last real token (the answer)
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


def implementation_reprs(net, clean, corrupt, lengths, circuit: list[str], count: int, seed: int, p: float = 0.5,
                         source: str = "counterfactual"):
    """The model's representation ``[N, D]`` and ``count`` GetImpl implementations ``[count, N, D]``
    (:func:`jaxequiv.equivalence.get_impl`): each patches every head outside ``circuit`` with probability ``p``
    with its activation on the counterfactual prompts (``source="counterfactual"``) or its mean / resampled
    activation on the clean prompts (``"mean"``, ``"resample"``); representation = residual stream (``embed``
    and every block) at the last real prompt token."""
    from jaxequiv import equivalence as eq

    z_names, resid = head_sites(net)
    base = eq.get_impl(net, clean, read=resid, n=1, lengths=lengths)[0]
    impls = eq.get_impl(net, clean, corrupt if source == "counterfactual" else None, read=resid, key=seed, n=count,
                        circuit=circuit, candidates=z_names, p=p, source=source, lengths=lengths)
    return np.asarray(base), np.asarray(impls)


def similarity_matrices(bases: list[np.ndarray], splits: int, seed: int) -> dict[str, np.ndarray]:
    """``{"linear_cka", "ridge"}`` ``[k, k]`` similarity of the models' representations ``bases`` (``[N, D_i]``):
    linear CKA, and the ridge R^2 (:func:`jaxequiv.similarity.ridge_score`) averaged over ``splits`` random
    90/10 splits and over both directions (ridge is asymmetric: X predicts Y). The diagonal is 1 by definition."""
    from jaxequiv import similarity as sim

    k = len(bases)
    out = {m: np.eye(k) for m in ("linear_cka", "ridge")}
    for i, j in itertools.combinations(range(k), 2):
        out["linear_cka"][i, j] = out["linear_cka"][j, i] = float(sim.linear_cka(bases[i], bases[j]))
        r2 = [float(sim.ridge_score(x, y, key=seed * 1000 + s)) for s in range(splits)
              for x, y in ((bases[i], bases[j]), (bases[j], bases[i]))]
        out["ridge"][i, j] = out["ridge"][j, i] = float(np.mean(r2))
    return out


def _pairs(families: list[str]) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Off-diagonal model pairs ``i < j`` within one family and across families."""
    pairs = list(itertools.combinations(range(len(families)), 2))
    return ([(i, j) for i, j in pairs if families[i] == families[j]],
            [(i, j) for i, j in pairs if families[i] != families[j]])


def family_contrast(mat: np.ndarray, families: list[str]) -> dict:
    """Mean off-diagonal similarity within families and across, their difference, and its exact permutation
    p-value: the share of all distinct re-labellings of the models (family sizes kept) whose difference is at
    least the observed one (the observed labelling included)."""
    mat = np.asarray(mat)

    def stat(labels):
        within, across = _pairs(list(labels))
        return np.mean([mat[p] for p in within]) - np.mean([mat[p] for p in across]), within, across

    within, across = _pairs(families)
    if not within or not across:
        raise ValueError(f"family_contrast needs pairs within and across families, got families {families}")
    diff = stat(families)[0]
    perms = set(itertools.permutations(families))
    null = np.array([stat(q)[0] for q in perms])
    return {"within": float(np.mean([mat[p] for p in within])), "across": float(np.mean([mat[p] for p in across])),
            "difference": float(diff), "p_permutation": float(np.mean(null >= diff - 1e-12)),
            "relabellings": len(perms)}


def cka_bootstrap(bases: list[np.ndarray], families: list[str], n_boot: int, seed: int) -> dict:
    """95% interval of (mean within-family - mean across-family) linear CKA over bootstrap resamples of the
    prompts (rows), all models resampled alike."""
    import jax
    import jax.numpy as jnp

    from jaxequiv import similarity as sim

    within, across = _pairs(families)
    idx = jax.random.randint(jax.random.key(seed), (n_boot, bases[0].shape[0]), 0, bases[0].shape[0])
    kernel = jax.vmap(lambda x, y: sim.LINEAR_CKA.kernel(x, y, None))
    cka = {p: np.asarray(kernel(jnp.asarray(bases[p[0]])[idx], jnp.asarray(bases[p[1]])[idx]))
           for p in within + across}
    diff = np.mean([cka[p] for p in within], 0) - np.mean([cka[p] for p in across], 0)
    lo, hi = np.quantile(diff, [0.025, 0.975])
    return {"difference_ci95": [float(lo), float(hi)], "n_boot": n_boot}


def impl_similarity(models: dict, families: list[str], measure, seed: int) -> dict[str, float]:
    """What congruity's rounds compare, averaged: the measure between a model and its *own* implementations, and
    between a model and the implementations of another model of its family (``"within"``) or of the other
    family (``"across"``). ``models``: ``{name: (base [N, D], impls [M, N, D])}``; distances are reported as
    they are (``measure.higher_is_similar`` False)."""
    import jax.numpy as jnp

    names = list(models)
    key = measure.key_for(seed)
    rows = []
    for i, a in enumerate(names):
        s = np.asarray(measure.many_kernel(jnp.asarray(models[a][0]), tuple(jnp.asarray(models[b][1]) for b in names),
                                           key))
        rows.append([v.mean() for v in np.split(s, np.cumsum([len(models[b][1]) for b in names])[:-1])])
    rows = np.asarray(rows)
    within, across = _pairs(families)
    both = lambda pairs: float(np.mean([rows[p] for i, j in pairs for p in ((i, j), (j, i))]))  # noqa: E731
    return {"own": float(np.mean(np.diag(rows))), "within": both(within) if within else None,
            "across": both(across) if across else None}


def family_means(cm, families: list[str], n_boot: int, seed: int) -> dict:
    """Mean off-diagonal congruity within each family and across families, each with a 95% bootstrap interval
    over the congruity rounds (resampled jointly for all pairs) of :class:`~jaxequiv.equivalence.CongruityMatrix`
    ``cm``; and the mean congruity of each model with itself."""
    ind = np.asarray(cm.indicators)  # (k, k, rounds, 2)
    boot = np.random.default_rng(seed).integers(0, ind.shape[2], (n_boot, ind.shape[2]))
    within, across = _pairs(families)
    groups = {f"within {f}": [p for p in within if families[p[0]] == f] for f in dict.fromkeys(families)}
    groups["across"] = across
    out = {}
    for name, pairs in groups.items():
        if not pairs:
            continue
        per_round = np.stack([ind[i, j].sum(1) for i, j in pairs])  # (pairs, rounds)
        boots = (1 - np.abs(per_round[:, boot].mean(-1) - 1)).mean(0)
        lo, hi = np.quantile(boots, [0.025, 0.975])
        out[name] = {"mean": float(np.mean([cm.score[p] for p in pairs])), "ci95": [float(lo), float(hi)],
                     "pairs": len(pairs)}
    out["self"] = {"mean": float(np.mean(np.diag(cm.score))), "min": float(np.min(np.diag(cm.score))),
                   "max": float(np.max(np.diag(cm.score)))}
    return out


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


def task_accuracy(net, vocab, mix: dict, n: int, seed: int, fact_seed: int) -> dict[str, float]:
    """Per task of ``mix``, the fraction of ``n`` held-out sentences (:func:`jaxequiv.data.ioi.task_corpus`) whose
    last word is the model's top prediction after the preceding words."""
    import jax
    import jax.numpy as jnp

    from jaxequiv.data.ioi import task_corpus

    out = {}
    for task in mix:
        ids, lengths = vocab.encode(task_corpus(n, {task: 1.0}, seed=seed, fact_seed=fact_seed))
        logits = np.asarray(jax.jit(net.apply)(net.params, jnp.asarray(ids)))
        rows = np.arange(n)
        out[task] = float((logits[rows, lengths - 2].argmax(-1) == ids[rows, lengths - 1]).mean())
    return out


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
            self.vocab = WordVocab.for_tasks()
            self.source = "built-in word-level vocabulary of the task corpus"

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


def analyse(name: str, net, task: dict, cfg: IOIConfig, log=print):
    """IO accuracy, KL scales and per-head importance of one model on tokenised ``task``; returns
    ``(base representation [N, D], head importance [L, H], summary)``."""
    from jaxequiv import equivalence as eq

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
    base = np.asarray(eq.get_impl(net, task["clean"], read=head_sites(net)[1], n=1, lengths=task["lengths"])[0])
    log(f"{name}: IO-vs-S accuracy {acc:.2f}, logit diff {diff:.2f}, circuit {circuit}")
    return base, imp, {"accuracy": acc, "logit_diff": diff, "kl_clean_corrupt": kl, "head_importance": imp.tolist(),
                       "circuit": circuit, "repr_dim": int(base.shape[-1])}


def _settings(cfg: IOIConfig) -> list[tuple[str, object, dict]]:
    """The default GetImpl / measure setting and the one-factor-at-a-time sweep around it:
    ``(factor, value, {p, circuit_frac, source, measure})``."""
    default = dict(p=cfg.p, circuit_frac=cfg.circuit_frac, source=cfg.source, measure="ridge")
    out = [("default", None, default)]
    for factor, values in (("p", cfg.sweep_p), ("circuit_frac", cfg.sweep_circuit_frac),
                           ("source", cfg.sweep_source), ("measure", cfg.sweep_measure)):
        out += [(factor, v, {**default, factor: v}) for v in values if v != default[factor]]
    return out


def run_experiment(cfg: IOIConfig, out_dir: str, checkpoints: list[str] | None = None, log=print) -> dict:
    """Train (or load) the models, compare their representations, find circuits, sample implementations, score
    congruity and its sensitivity; write ``results.json``, ``congruity.png``, ``similarity.png`` and
    ``sensitivity.png`` into ``out_dir``.

    Args:
      checkpoints: Hugging Face GPT-2 / Pythia (GPT-NeoX) folders (or any folder :func:`jaxequiv.adapters.torch.load`
        reads) to compare instead of training models here.
    """
    from jaxequiv import equivalence as eq
    from jaxequiv import similarity as sim
    from jaxequiv.data.ioi import TEMPLATES, ioi_prompts, task_corpus
    from jaxequiv.io.files import write_json
    from jaxequiv.io.provenance import provenance

    t0 = time.time()
    timings: dict[str, float] = {}

    def lap(name: str, since: float) -> float:
        timings[name] = round(timings.get(name, 0.0) + time.time() - since, 1)
        return time.time()

    os.makedirs(out_dir, exist_ok=True)
    ev = ioi_prompts(cfg.n_eval, seed=cfg.seed + 2)
    nets, tasks, families, bases, imps = {}, {}, [], [], []
    results = {"config": dataclasses.asdict(cfg), "models": {}}
    if checkpoints:
        from jaxequiv.adapters.torch import load_network

        toks = [Tokenizer(c) for c in checkpoints]
        keep, toks_tasks = tokenize_task(ev, toks)
        results["prompts_kept"] = len(keep)
        for folder, tok, task in zip(checkpoints, toks, toks_tasks):
            name = os.path.basename(os.path.normpath(folder))
            t = time.time()
            nets[name], tasks[name] = load_network(folder), task
            base, imp, summary = analyse(name, nets[name], task, cfg, log)
            lap("circuits", t)
            families.append(name.split("-")[0])
            bases.append(base)
            imps.append(imp)
            results["models"][name] = {"family": families[-1], "checkpoint": os.path.abspath(folder),
                                       "tokenizer": tok.source, **summary}
    else:
        tok = Tokenizer()
        vocab = tok.vocab
        _, (task,) = tokenize_task(ev, [tok])
        results["families"] = FAMILIES
        for m, (fam, size, spec) in enumerate(model_specs(cfg)):
            mix, fact_seed = FAMILIES[fam]["mix"], FAMILIES[fam]["fact_seed"]
            ids, lengths = vocab.encode(task_corpus(cfg.n_train, mix, seed=cfg.seed + 1, fact_seed=fact_seed,
                                                    templates=[TEMPLATES[t] for t in FAMILIES[fam]["templates"]]))
            t = time.time()
            stack, loss = train_lms(spec, ids, lengths, len(vocab), cfg, init=_init_seed(cfg, m))
            t = lap(f"training {fam}", t)
            for s in range(cfg.seeds):
                name = f"{fam}-{size} s{s}"
                nets[name], tasks[name] = stack[s], task
                base, imp, summary = analyse(name, stack[s], task, cfg, log)
                acc = task_accuracy(stack[s], vocab, mix, 100, cfg.seed + 3, fact_seed)
                families.append(fam)
                bases.append(base)
                imps.append(imp)
                results["models"][name] = {"family": fam, "size": size, "seed": s, "train_loss": float(loss[s]),
                                           "task_accuracy": acc, **summary}
            lap("circuits", t)
    names = list(nets)
    results["names"], results["family_of"] = names, families

    # 1. the structure congruity is meant to find: within-family vs across-family representational similarity
    t = time.time()
    simil = similarity_matrices(bases, cfg.ridge_splits, cfg.seed + 5)
    results["similarity"] = {m: {"matrix": v.tolist(), **(family_contrast(v, families) if len(set(families)) > 1
                                                           and len(families) > len(set(families)) else {})}
                             for m, v in simil.items()}
    if "within" in results["similarity"]["linear_cka"]:
        results["similarity"]["linear_cka"].update(cka_bootstrap(bases, families, cfg.n_boot, cfg.seed + 6))
    lap("similarity", t)

    # 2. congruity at the default setting, and 3. its sensitivity, one factor at a time
    results["sensitivity"] = []
    cache = {}
    ridge_fixed = sim.get_measure("ridge", split=cfg.seed + 11)  # one 90/10 split: each pair scored once
    for factor, value, st in _settings(cfg):
        t = time.time()
        impl_key = (st["p"], st["circuit_frac"], st["source"])
        if impl_key not in cache:
            cache[impl_key] = {}
            for k, name in enumerate(names):
                z_names, _ = head_sites(nets[name])
                circuit = circuit_units(imps[k], st["circuit_frac"], z_names)
                task = tasks[name]
                cache[impl_key][name] = implementation_reprs(nets[name], task["clean"], task["corrupt"],
                                                             task["lengths"], circuit, cfg.impls, cfg.seed + k,
                                                             st["p"], st["source"])
        models = cache[impl_key]
        t = lap("implementations", t)
        measure = ridge_fixed if st["measure"] == "ridge" else sim.get_measure(st["measure"])
        rounds = cfg.rounds if factor == "default" else cfg.sweep_rounds
        cm = eq.congruity_matrix(models, key=cfg.seed + 7, n_rounds=rounds, measure=measure, n_boot=cfg.n_boot)
        means = family_means(cm, families, cfg.n_boot, cfg.seed + 8)
        moved = [float(np.linalg.norm(imp - base[None], axis=(1, 2)).mean() /
                       np.linalg.norm(base - base.mean(0)))
                 for base, imp in models.values()]
        entry = {"factor": factor, "value": value, "setting": st, "rounds": rounds, "family_means": means,
                 "impl_distance": float(np.mean(moved)),
                 "impl_similarity": impl_similarity(models, families, measure, cfg.seed + 9)}
        if factor == "default":
            results["congruity"], results["congruity_ci95"] = cm.score.tolist(), np.stack(
                [cm.ci_low, cm.ci_high], -1).tolist()
            results["congruity_family_means"] = means
        results["sensitivity"].append(entry)
        log(f"{factor}={value}: " + ", ".join(f"{g} {m['mean']:.2f}" for g, m in means.items()))
        lap("congruity", t)
    results["seconds"] = round(time.time() - t0, 1)
    results["timings_s"] = {**timings, "total": results["seconds"]}
    results["provenance"] = provenance(
        cfg, seeds={"run": cfg.seed, "model init": [_init_seed(cfg, m) + s for m in range(len(model_specs(cfg)))
                                                for s in range(cfg.seeds)]}, started=t0)
    write_json(os.path.join(out_dir, "results.json"), results)  # before the figures: a plotting error loses nothing
    _figures(out_dir, results)
    log(f"congruity:\n{np.round(np.asarray(results['congruity']), 2)}\ndone in {results['seconds']}s")
    return results


def _figures(out_dir: str, res: dict) -> None:
    """``congruity.png`` (default setting), ``similarity.png`` (CKA, ridge) and, for a sweep, ``sensitivity.png``
    (family-mean congruity per setting)."""
    from experiments.equiv_toy.run import _heatmaps
    from jaxequiv.io.figures import interval_yerr, save_figure, subplots

    names = [n.replace(" ", "/") for n in res["names"]]
    _heatmaps(os.path.join(out_dir, "congruity.png"), [("IOI congruity", np.asarray(res["congruity"]))], names)
    _heatmaps(os.path.join(out_dir, "similarity.png"),
              [(f"{m} (base models)", np.asarray(v["matrix"])) for m, v in res["similarity"].items()], names)
    sweep = res["sensitivity"]
    groups = [g for g in sweep[0]["family_means"] if g != "self"]
    fig, ax = subplots(1, 1, figsize=(max(5.0, 0.6 * len(sweep)), 3.4))
    x = np.arange(len(sweep))
    for k, g in enumerate(groups):
        m = np.array([e["family_means"][g]["mean"] for e in sweep])
        ci = np.array([e["family_means"][g]["ci95"] for e in sweep])
        ax.errorbar(x + 0.12 * (k - (len(groups) - 1) / 2), m, yerr=interval_yerr(m, ci), fmt="o",
                    capsize=2, label=g)
    ax.set_xticks(x, [e["factor"] if e["value"] is None else f"{e['factor']}={e['value']}" for e in sweep],
                  rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("mean congruity")
    ax.set_ylim(-0.03, 1.03)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, os.path.join(out_dir, "sensitivity.png"), dpi=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny run for tests")
    parser.add_argument("--wide", action="store_true", help="the wider models of WIDE -> results/wide")
    parser.add_argument("--checkpoint", nargs="+", metavar="DIR",
                        help="Hugging Face GPT-2 / Pythia folders to compare (instead of training models here)")
    parser.add_argument("--out", default=None,
                        help="output folder (default: results/full, results/wide, results/quick or "
                        "results/checkpoints here)")
    args = parser.parse_args(argv)
    preset = "checkpoints" if args.checkpoint else "quick" if args.quick else "wide" if args.wide else "full"
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", preset)
    run_experiment(QUICK if args.quick else WIDE if args.wide else IOIConfig(), out, checkpoints=args.checkpoint)
    return 0


if __name__ == "__main__":
    sys.exit(main())
