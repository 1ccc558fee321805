"""A CODEC report of one :class:`~jaxequiv.codec.workflow.CodecAnalysis`: markdown tables of its numbers and
figures (statistics per site, class selectivity, causal control, mode pictures).

matplotlib (extra ``plot``) is imported when a figure is drawn; every file is written atomically (see
:mod:`jaxequiv.io`). Callers add their own sections (e.g. a comparison with published numbers) through
``sections=`` and may annotate the figures of :func:`draw_figures` before passing them to :func:`write_report`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jaxequiv.codec.interventions import KINDS, auc_summary, curves
from jaxequiv.codec.workflow import CodecAnalysis
from jaxequiv.io.figures import save_figure, subplots
from jaxequiv.io.files import write_text

__all__ = ["FIGURES", "markdown_table", "draw_figures", "report_markdown", "write_report"]

# figure key -> (file name, caption)
FIGURES = {
    "statistics": ("statistics.png", "Contributions vs activations per site"),
    "selectivity": ("selectivity.png", "Modes against classes"),
    "interventions": ("interventions.png", "Causal control with modes"),
    "pictures": ("mode_pictures.png", "Mode pictures"),
}


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A markdown table; floats with two decimals."""
    f = lambda v: f"{v:.2f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(f(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def _median(a) -> float:
    return float(np.nanmedian(np.asarray(a, np.float64)))


def _color(source: str, i: int) -> str:
    return {"contribution": "C3", "activation": "C0"}.get(source, f"C{i + 4}")


def _statistics(res: CodecAnalysis):
    st = res.stats
    n = len(st.sites)
    x = np.arange(n)
    fig, ax = subplots(2, 2, figsize=(12, 8))
    a = ax[0, 0]
    for off, data, color, label in ((-0.2, st.hoyer_contrib, "C3", "contributions"),
                                    (0.2, st.hoyer_act, "C0", "activations")):
        bp = a.boxplot([np.asarray(d)[np.isfinite(d)] for d in data], positions=x + off, widths=0.35,
                       showfliers=False, patch_artist=True)
        for b in bp["boxes"]:
            b.set(facecolor=color, alpha=0.4)
        a.plot([], [], color=color, lw=6, alpha=0.4, label=label)
    a.set(title="B. Hoyer sparsity per example", xticks=x, xticklabels=st.sites, ylabel="Hoyer")
    a.legend(fontsize=7)
    a = ax[0, 1]
    a.boxplot([np.asarray(d)[np.isfinite(d)] for d in st.decorrelation], positions=x, showfliers=False)
    a.set(title="D. -corr(negative, positive) per example", xticks=x, xticklabels=st.sites)
    a = ax[1, 0]
    a.bar(x - 0.2, st.dim_contrib, 0.4, color="C3", label="contributions")
    a.bar(x + 0.2, st.dim_act, 0.4, color="C0", label="activations")
    a.set(title="F. PCs for 95% of class-mean variance", xticks=x, xticklabels=st.sites, ylabel="# components")
    a.legend(fontsize=7)
    a = ax[1, 1]
    for i, ls in ((0, "--"), (n - 1, "-")):
        a.plot(np.arange(1, len(st.foev_contrib[i]) + 1), st.foev_contrib[i], ls, color="C3",
               label=f"contrib. {st.sites[i]}")
        a.plot(np.arange(1, len(st.foev_act[i]) + 1), st.foev_act[i], ls, color="C0", label=f"act. {st.sites[i]}")
    a.axhline(0.95, color="gray", lw=0.5)
    a.set(title="E. cumulative explained variance of class means", xlabel="# components", ylabel="FOEV")
    a.legend(fontsize=7)
    for a in ax.flat:
        a.tick_params(axis="x", labelsize=7, rotation=45)
    fig.suptitle("Contributions vs activations")
    return fig


def _selectivity(res: CodecAnalysis):
    sites, sel = res.sites, res.selectivity
    x = np.arange(len(sites))
    last = sites[-1]
    fig, ax = subplots(1, 3, figsize=(15, 4))
    for i, (src, by_site) in enumerate(sel.items()):
        color = _color(src, i)
        v = np.asarray(by_site[last].modes.top_corr)
        ax[0].hist(v, bins=30, range=(-0.1, 1), alpha=0.5, color=color,
                   label=f"{src} modes (median {np.median(v):.2f})")
        ax[1].plot(x, [int(by_site[s].modes.n_selective) for s in sites], "o-", color=color, label=f"{src} modes")
        ax[2].plot(x, [float(by_site[s].modes.median_top_corr) for s in sites], "o-", color=color,
                   label=f"{src} modes")
        ax[2].plot(x, [float(by_site[s].channels.median_top_corr) for s in sites], "s:", color=color,
                   label=f"{src} channels")
    ax[0].set(title=f"A. top class correlation of modes at {last}", xlabel="max_class corr")
    ax[1].set(title="C. # modes with top correlation > 0.2", xticks=x, xticklabels=sites)
    ax[2].set(title="D. median top class correlation", xticks=x, xticklabels=sites)
    for a in ax:
        a.legend(fontsize=7)
    for a in ax[1:]:
        a.tick_params(axis="x", labelsize=7, rotation=45)
    fig.suptitle("Modes against classes")
    return fig


def _interventions(res: CodecAnalysis):
    inter = res.interventions
    sites = [s for s in res.sites if all(s in by_site for by_site in inter.values())]
    shown = sites[len(sites) // 2]
    fig, ax = subplots(1, 3, figsize=(15, 4))
    for k, kind in enumerate(KINDS):
        a = ax[k]
        for i, (src, by_site) in enumerate(inter.items()):
            r = by_site[shown]
            mean, sem = curves(r.ratio)
            for role, ls in ((0, "-"), (1, ":")):
                m, e = mean[k, :, role, 0], sem[k, :, role, 0]
                a.plot(r.percentages, m, ls, color=_color(src, i), marker="o", ms=3,
                       label=f"{src} mode, {'target' if role == 0 else 'off-target'}")
                a.fill_between(r.percentages, m - e, m + e, color=_color(src, i), alpha=0.1)
        a.set(title=f"{kind} the target mode's top channels, {shown}", xlabel="% channels",
              ylabel="top-1 accuracy ratio")
        if any(np.isfinite(line.get_ydata()).any() for line in a.get_lines()):
            a.set_xscale("log")
        a.legend(fontsize=7)
    a = ax[2]
    x = np.array([res.sites.index(s) for s in sites])
    for k, kind in enumerate(KINDS):
        for i, (src, by_site) in enumerate(inter.items()):
            a.plot(x, [float(auc_summary(by_site[s])[k, 0]) for s in sites], "o-" if kind == "ablate" else "s--",
                   color=_color(src, i), label=f"{kind}, {src}")
    a.axhline(0, color="gray", lw=0.5)
    a.set(title="(AUC_target - AUC_off) / AUC_off", xticks=x, xticklabels=sites)
    a.tick_params(axis="x", labelsize=7, rotation=45)
    a.legend(fontsize=7)
    fig.suptitle("Causal control with modes")
    return fig


def _pictures(res: CodecAnalysis):
    pic = res.pictures
    images, masks = np.asarray(pic.images), np.asarray(pic.masks)
    n = images.shape[0]
    fig, ax = subplots(2, n, figsize=(1.8 * n, 4), squeeze=False)
    for i in range(n):
        img = images[i].mean(-1) if images.shape[-1] != 3 else images[i]
        img = (img - img.min()) / max(float(img.max() - img.min()), 1e-12)
        ax[0, i].imshow(img, cmap="gray")
        ax[0, i].set_title(f"{res.class_name(int(pic.classes[i]))}: mode {int(pic.modes[i])}", fontsize=7)
        shown = img * (masks[i][..., None] if img.ndim == 3 else masks[i])
        ax[1, i].imshow(shown, cmap="magma")
        for a in ax[:, i]:
            a.axis("off")
    fig.suptitle(f"Mode pictures at {pic.site}: image x contribution mask (top row: image)")
    return fig


def draw_figures(res: CodecAnalysis) -> dict[str, Any]:
    """matplotlib figures keyed as :data:`FIGURES`, for the parts ``res`` has.

    Axes (``fig.axes``, in order): statistics = Hoyer per example (contributions at x - 0.2, activations at
    x + 0.2 for site x), -corr(neg, pos), dimensionality, explained-variance curves; selectivity = histogram at
    the last site, # selective modes, median top class correlation; interventions = ablate curves, preserve
    curves, AUC summary per site.
    """
    figs = {"statistics": _statistics(res)}
    if res.selectivity:
        figs["selectivity"] = _selectivity(res)
    if res.interventions:
        figs["interventions"] = _interventions(res)
    if res.pictures is not None:
        figs["pictures"] = _pictures(res)
    return figs


def report_markdown(res: CodecAnalysis, figures: Mapping[str, str], title: str = "CODEC report", *,
                    meta: Mapping[str, Any] | None = None, sections: Sequence[str] = ()) -> str:
    """The markdown of a report: ``meta`` as a list, then ``sections`` (markdown), then the tables of ``res``
    and ``figures`` (``{caption: file name}``)."""
    st = res.stats
    parts = [f"# {title}", ""]
    parts += [f"- **{k}**: {v}" for k, v in (meta or {}).items()]
    parts += [""]
    for section in sections:
        parts += [section.rstrip(), ""]
    parts += ["## Statistics per site", ""]
    rows = [[s, st.channels[i], _median(st.hoyer_contrib[i]), _median(st.hoyer_act[i]), _median(st.decorrelation[i]),
             st.dim_contrib[i], st.dim_act[i]] for i, s in enumerate(st.sites)]
    parts.append(markdown_table(["site", "C", "Hoyer contrib.", "Hoyer act.", "-corr(n,p)", "dim contrib.",
                                 "dim act."], rows))
    parts += ["", "Hoyer and -corr(n,p): medians over examples; dim: principal components reaching 95% of the "
              "class-mean variance.", ""]
    if res.modes:
        parts += ["## Modes (one SAE per site and source)", ""]
        rows = [[s] + [f"{int(by_site[s].modes.alive.sum())}/{by_site[s].modes.alive.size}, {by_site[s].r2:.2f}"
                       for by_site in res.modes.values()] for s in res.sites]
        parts += [markdown_table(["site"] + [f"{src}: alive / K, R^2" for src in res.modes], rows), ""]
    if res.selectivity:
        parts += ["## Class selectivity", ""]
        rows = []
        for s in res.sites:
            r = [s]
            for by_site in res.selectivity.values():
                m = by_site[s]
                r += [int(m.corr.shape[0]), float(m.modes.median_top_corr), float(m.channels.median_top_corr),
                      int(m.modes.n_selective), int(m.modes.classes_covered)]
            rows.append(r)
        hdr = ["site"] + [f"{src} {q}" for src in res.selectivity
                          for q in ("modes", "median top corr (modes)", "(channels)", "# modes > 0.2", "classes")]
        parts += [markdown_table(hdr, rows), ""]
    if res.interventions:
        parts += ["## Causal control: (AUC_target - AUC_off) / AUC_off of top-1 accuracy ratios", ""]
        sites = [s for s in res.sites if all(s in by_site for by_site in res.interventions.values())]
        rows = [[s] + [float(auc_summary(by_site[s])[k, 0]) for k in range(len(KINDS))
                       for by_site in res.interventions.values()] for s in sites]
        parts.append(markdown_table(["site"] + [f"{kind} {src}" for kind in KINDS for src in res.interventions],
                                    rows))
        parts += ["", "Ablation: negative = the target class loses more than an off-target class (-1 ideal); "
                  "preservation: positive = the target keeps more.", ""]
    if res.superclass is not None:
        sc = res.superclass
        parts += [f"## Superclass variant: concept {[res.class_name(c) for c in sc.classes]}, sites {sc.sites} "
                  "perturbed together", "", "Top-1 accuracy per class (* = in the concept), before -> after.", ""]
        n_classes = next(iter(sc.results.values())).original.shape[0]
        rows = [[res.class_name(c) + ("*" if c in sc.classes else "")]
                + [f"{r.original[c, 0]:.2f} -> {r.perturbed[c, 0]:.2f}" for r in sc.results.values()]
                for c in range(n_classes)]
        parts += [markdown_table(["class"] + [f"{k} {p:g}%" for k, p in sc.percentages.items()], rows), ""]
    parts += ["## Figures", ""]
    parts += [f"![{caption}]({file})" for caption, file in figures.items()]
    return "\n".join(parts) + "\n"


def write_report(out_dir: str | os.PathLike, res: CodecAnalysis, title: str = "CODEC report", *,
                 meta: Mapping[str, Any] | None = None, sections: Sequence[str] = (),
                 figures: Mapping[str, tuple[str, Any]] | None = None) -> str:
    """Write ``report.md`` and its PNG figures to ``out_dir``; returns the markdown's path.

    Args:
      meta: facts listed at the top (data set, network, settings, ...).
      sections: further markdown sections placed before the tables.
      figures: ``{file name: (caption, matplotlib figure)}``; default :func:`draw_figures` named as
        :data:`FIGURES`.
    """
    os.makedirs(out_dir, exist_ok=True)
    if figures is None:
        figures = {FIGURES[k][0]: (FIGURES[k][1], fig) for k, fig in draw_figures(res).items()}
    for file, (_, fig) in figures.items():
        save_figure(fig, os.path.join(out_dir, file), dpi=110, bbox_inches="tight")
    path = os.path.join(out_dir, "report.md")
    write_text(path, report_markdown(res, {caption: file for file, (caption, _) in figures.items()}, title,
                                     meta=meta, sections=sections))
    return path
