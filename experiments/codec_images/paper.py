"""The CODEC paper's ResNet-50 numbers (spec ``papers/codec.md`` §6) beside ours: findings (a)-(f) checked with
numbers, comparison tables, and the paper's values drawn onto the figures of :func:`jaxequiv.codec.report.draw_figures`.

Our network has fewer blocks than ResNet-50's 16 layers, so block ``i`` of ``n`` is compared with the paper's layer
``round(i * 15 / (n - 1))`` (same relative depth).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxequiv.codec import CodecAnalysis
from jaxequiv.codec.interventions import KINDS, auc_summary
from jaxequiv.codec.report import markdown_table

__all__ = ["PAPER", "CLAIMS", "paper_layer", "e_holds", "f_holds", "middle_blocks", "findings", "sections", "annotate"]

# ResNet-50 values read off the paper's figures (codec.md §6; about +-0.03), indexed by layer L0..L15.
PAPER = {
    "hoyer_contrib": [0.42, 0.38, 0.37, 0.44, 0.38, 0.36, 0.37, 0.45, 0.45, 0.45, 0.45, 0.45, 0.45, 0.50, 0.53, 0.63],
    "hoyer_act": [0.25, 0.20, 0.16, 0.28, 0.16, 0.14, 0.15, 0.23, 0.23, 0.23, 0.23, 0.23, 0.23, 0.23, 0.26, 0.30],
    "decorrelation": [0.98, 0.98, 0.98, 0.93, 0.81, 0.70, 0.68, 0.55, 0.49, 0.39, 0.39, 0.39, 0.39, 0.09, -0.03,
                      -0.02],
    "dim_contrib": {0: 48, 3: 110, 7: 260, 12: 320, 13: 430, 15: 425},
    "dim_act": {0: 12, 15: 195},
    "median_top_corr_L15": {"contribution modes": 0.52, "contribution channels": 0.34, "activation modes": 0.33,
                            "activation channels": 0.15},
    "ablation_layers": [3, 6, 7, 9, 11, 13, 14, 15],
    "ablate_contrib": [-0.15, -0.25, -0.6, -0.67, -0.75, -0.82, -0.85, -0.85],
    "ablate_act": [-0.2, -0.25, -0.3, -0.45, -0.55, -0.78, -0.85, -0.85],
    "preserve_contrib": [0.2, 0.32, 0.5, 1.05, 0.97, 1.18, 1.05, 0.88],
    "preserve_act": [0.25, 0.2, 0.25, 0.55, 0.7, 1.15, 1.15, 1.08],
}
PAPER_SEVERAL_RANGES = "L7-12 Hoyer values are the mid-points of the paper's ranges (0.43-0.47, 0.17-0.29)"
SOURCE_KEY = {"contribution": "contrib", "activation": "act"}
# the paper's findings (a)-(f) as checked by :func:`findings`
CLAIMS = {
    "a": "contributions sparser than activations at every block",
    "b": "contribution sparsity rises with depth",
    "c": "-corr(neg, pos) falls with depth",
    "d": "contributions of higher dimensionality than activations",
    "e": "contribution modes more class-selective than activation modes",
    "f": "ablating a class's top contribution mode hurts it more than an off-target class, and more than an "
         "activation mode does in middle layers",
}


def paper_layer(i: int, n: int) -> int:
    """The ResNet-50 layer (0..15) at the same relative depth as our block ``i`` of ``n``."""
    return int(round(i * 15 / max(n - 1, 1)))


def paper_ablation(kind: str, source: str, layer: int) -> float:
    """The paper's normalised AUC difference (``kind`` ablate/preserve, ``source`` contribution/activation) at the
    listed layer nearest to ``layer``."""
    ls = PAPER["ablation_layers"]
    j = int(np.argmin([abs(x - layer) for x in ls]))
    return PAPER[f"{kind}_{SOURCE_KEY[source]}"][j]


def _median(a) -> float:
    return float(np.nanmedian(np.asarray(a, np.float64)))


def _spearman(v: Sequence[float]) -> float:
    v = np.asarray(v, np.float64)
    if v.size < 3 or np.all(v == v[0]):
        return float("nan")
    r = np.argsort(np.argsort(v))
    return float(np.corrcoef(np.arange(v.size), r)[0, 1])


def e_holds(contrib: Sequence[float], act: Sequence[float]) -> bool:
    """Finding (e) from the per-block median top class correlations of contribution and activation modes:
    contribution modes the more selective at most blocks and at the last."""
    wins = sum(c > a for c, a in zip(contrib, act))
    return bool(wins > len(contrib) / 2 and contrib[-1] > act[-1])


def middle_blocks(positions: Sequence[int], n: int) -> list[int]:
    """Indices into ``positions`` (block positions out of ``n``) of the middle half of the network (all if none)."""
    return [j for j, i in enumerate(positions) if n / 4 <= i < 3 * n / 4] or list(range(len(positions)))


def f_holds(contrib: Sequence[float], act: Sequence[float], positions: Sequence[int] | None = None,
            n: int | None = None) -> bool:
    """Finding (f) from per-block ablation summaries (AUC_target - AUC_off) / AUC_off of contribution and activation
    modes at blocks ``positions`` (default all ``n`` = len(contrib)): the target hurt more at every block, and
    contribution modes the stronger handle at most middle blocks."""
    positions = list(range(len(contrib))) if positions is None else list(positions)
    middle = middle_blocks(positions, len(contrib) if n is None else n)
    return bool(all(c < 0 for c in contrib) and sum(contrib[j] < act[j] for j in middle) > len(middle) / 2)


def findings(res: CodecAnalysis) -> dict[str, dict[str, Any]]:
    """The paper's findings (a)-(f) on this network: ``{letter: {"claim", "holds", "evidence"}}``."""
    st = res.stats
    n = len(st.sites)
    hc = [_median(h) for h in st.hoyer_contrib]
    ha = [_median(h) for h in st.hoyer_act]
    dec = [_median(d) for d in st.decorrelation]
    out: dict[str, dict[str, Any]] = {}
    fmt = lambda v: ", ".join(f"{x:.2f}" for x in v)  # noqa: E731
    wins = sum(c > a for c, a in zip(hc, ha))
    out["a"] = dict(claim=CLAIMS["a"], holds=wins == n,
                    evidence=f"median Hoyer contributions [{fmt(hc)}] vs activations [{fmt(ha)}]: {wins}/{n} blocks")
    rho = _spearman(hc)
    out["b"] = dict(claim=CLAIMS["b"], holds=bool(rho > 0.5 and hc[-1] > hc[0]),
                    evidence=f"Spearman(depth, median Hoyer) = {rho:.2f}; first {hc[0]:.2f} -> last {hc[-1]:.2f}")
    rho = _spearman(dec)
    out["c"] = dict(claim=CLAIMS["c"], holds=bool(rho < -0.5 and dec[-1] < dec[0]),
                    evidence=f"Spearman(depth, median -corr) = {rho:.2f}; values [{fmt(dec)}]")
    wins = sum(c > a for c, a in zip(st.dim_contrib, st.dim_act))
    out["d"] = dict(claim=CLAIMS["d"], holds=wins == n,
                    evidence=f"95%-variance PCs of class means, contributions {st.dim_contrib} vs activations "
                             f"{st.dim_act}: {wins}/{n} blocks")
    sel = res.selectivity
    if "contribution" in sel and "activation" in sel:
        mc = [float(sel["contribution"][s].modes.median_top_corr) for s in st.sites]
        ma = [float(sel["activation"][s].modes.median_top_corr) for s in st.sites]
        wins = sum(c > a for c, a in zip(mc, ma))
        out["e"] = dict(claim=CLAIMS["e"], holds=e_holds(mc, ma),
                        evidence=f"median top class correlation of modes, contributions [{fmt(mc)}] vs activations "
                                 f"[{fmt(ma)}]: {wins}/{n} blocks (incl. the last: {mc[-1] > ma[-1]})")
    inter = res.interventions
    if "contribution" in inter and "activation" in inter:
        sites = [s for s in st.sites if s in inter["contribution"] and s in inter["activation"]]
        ab_c = [float(auc_summary(inter["contribution"][s])[0, 0]) for s in sites]
        ab_a = [float(auc_summary(inter["activation"][s])[0, 0]) for s in sites]
        idx = [st.sites.index(s) for s in sites]
        middle = middle_blocks(idx, n)
        hurt = sum(v < 0 for v in ab_c)
        better = sum(ab_c[j] < ab_a[j] for j in middle)
        out["f"] = dict(
            claim=CLAIMS["f"], holds=f_holds(ab_c, ab_a, idx, n),
            evidence=f"(AUC_target - AUC_off)/AUC_off of top-1 ablation at {sites}: contributions [{fmt(ab_c)}] vs "
                     f"activations [{fmt(ab_a)}]; target hurt more at {hurt}/{len(sites)}; contribution mode "
                     f"stronger than activation mode at {better}/{len(middle)} middle blocks")
    return out


def sections(res: CodecAnalysis) -> list[str]:
    """Markdown sections comparing ``res`` with the paper: the findings, then its tables with ResNet-50's values."""
    st = res.stats
    n = len(st.sites)
    lines = ["## Findings of the paper on this network", ""]
    for letter, f in findings(res).items():
        lines.append(f"- ({letter}) {f['claim']}: **{'holds' if f['holds'] else 'does not hold'}**. {f['evidence']}")
    out = ["\n".join(lines)]
    rows = []
    for i, s in enumerate(st.sites):
        p = paper_layer(i, n)
        rows.append([s, f"L{p}", _median(st.hoyer_contrib[i]), PAPER["hoyer_contrib"][p], _median(st.hoyer_act[i]),
                     PAPER["hoyer_act"][p], _median(st.decorrelation[i]), PAPER["decorrelation"][p],
                     st.dim_contrib[i], PAPER["dim_contrib"].get(p, "-"), st.dim_act[i],
                     PAPER["dim_act"].get(p, "-")])
    out.append("\n".join([
        "## Per-block statistics (Figure 3), ResNet-50 values at the same relative depth", "",
        markdown_table(["block", "paper layer", "Hoyer contrib.", "paper", "Hoyer act.", "paper", "-corr(n,p)",
                        "paper", "dim contrib.", "paper", "dim act.", "paper"], rows), "",
        f"Medians over examples. {PAPER_SEVERAL_RANGES}."]))
    if res.selectivity:
        out.append("Class selectivity (Figure 5), paper at L15: "
                   + ", ".join(f"{k} {v}" for k, v in PAPER["median_top_corr_L15"].items()))
    inter = res.interventions
    if "contribution" in inter and "activation" in inter:
        rows = []
        for s in [s for s in st.sites if s in inter["contribution"] and s in inter["activation"]]:
            p = paper_layer(st.sites.index(s), n)
            r = [s, f"L{p}"]
            for k, kind in enumerate(KINDS):
                for src in ("contribution", "activation"):
                    r += [float(auc_summary(inter[src][s])[k, 0]), paper_ablation(kind, src, p)]
            rows.append(r)
        out.append("\n".join([
            "## Causal control (Figure 6) beside ResNet-50: (AUC_target - AUC_off) / AUC_off", "",
            markdown_table(["block", "paper layer", "ablate contrib.", "paper", "ablate act.", "paper",
                            "preserve contrib.", "paper", "preserve act.", "paper"], rows)]))
    if res.superclass is not None:
        out.append("Superclass variant, paper (ImageNet dogs, layers 12-15): ablating 9% drops the dog classes to "
                   "about 0-50% top-5 accuracy while most others stay at 80-100%; preserving 37% sends every non-dog "
                   "class to about 0.")
    return out


def annotate(figs: dict[str, Any], res: CodecAnalysis) -> None:
    """Draw the paper's ResNet-50 values (triangles) onto the figures of :func:`draw_figures`, in place."""
    st = res.stats
    n = len(st.sites)
    x = np.arange(n)
    pl = [paper_layer(i, n) for i in range(n)]
    hoyer, decorrelation = figs["statistics"].axes[:2]
    hoyer.plot(x - 0.2, [PAPER["hoyer_contrib"][p] for p in pl], "v", color="C3", label="ResNet-50 (paper) contrib.")
    hoyer.plot(x + 0.2, [PAPER["hoyer_act"][p] for p in pl], "v", color="C0", label="ResNet-50 (paper) act.")
    hoyer.legend(fontsize=7)
    decorrelation.plot(x, [PAPER["decorrelation"][p] for p in pl], "v", color="k", label="ResNet-50 (paper) median")
    decorrelation.legend(fontsize=7)
    if "selectivity" in figs:
        a = figs["selectivity"].axes[2]
        for label, v in PAPER["median_top_corr_L15"].items():
            a.plot([n - 1], [v], "v", color="C3" if label.startswith("contribution") else "C0", alpha=0.6)
        a.plot([], [], "v", color="gray", label="ResNet-50 (paper) at L15")
        a.legend(fontsize=7)
    if "interventions" in figs:
        a = figs["interventions"].axes[2]
        sites = [s for s in st.sites if all(s in by_site for by_site in res.interventions.values())]
        xs = [st.sites.index(s) for s in sites]
        for kind in KINDS:
            for src, color in (("contribution", "C3"), ("activation", "C0")):
                a.plot(xs, [paper_ablation(kind, src, paper_layer(i, n)) for i in xs], "v", color=color, alpha=0.4)
        a.plot([], [], "v", color="gray", label="ResNet-50 (paper)")
        a.legend(fontsize=7)
