"""Regenerate the number-bearing blocks of every experiment README from its committed full-run results.

    python experiments/readme_tables.py           # rewrite the blocks between the markers of each README.md
    python experiments/readme_tables.py --check   # exit 1 if a README is not what its results.json gives

Each experiment's ``results/full/results.json`` (written by its ``run.py``, committed) is the only source of the
numbers in its README: the blocks between ``<!-- generated: NAME ... -->`` and ``<!-- end generated: NAME -->``
are rendered here and never typed. The paper's values quoted beside ours are the constants below.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
if __package__ in (None, ""):  # run as a script: make ``experiments`` importable
    sys.path.insert(0, str(HERE.parent))

from experiments.codec_images.paper import CLAIMS  # noqa: E402
from jaxequiv.codec.report import markdown_table  # noqa: E402
from jaxequiv.io.generated import regenerate  # noqa: E402

RESULTS = "results/full/results.json"
SENSITIVITY = "results/sensitivity/results.json"  # the experiments' sensitivity.py
FASHION = "results/sensitivity_fashion/results.json"  # CODEC's sensitivity.py --preset fashion
WIDE = "results/wide/results.json"  # equiv_ioi/run.py --wide

# values the papers report, quoted beside ours (equivalence paper, Fig. 2)
TOY_PAPER = {"within sorting": "0.43", "within counting": "—", "across families": "0.01"}
IOI_PAPER = {"within family": "Pythia 0.73, GPT-2 0.92", "across families": "0.13",
             "model with itself": '"not always ≈ 1"'}


def markers(name: str, results: str = RESULTS) -> tuple[str, str]:
    """The begin / end marker lines of the generated block ``name`` (rendered from ``results``)."""
    return (f"<!-- generated: {name} (experiments/readme_tables.py from {results}; do not edit) -->",
            f"<!-- end generated: {name} -->")


def f2(v: float) -> str:
    """Two decimals, without the sign of a negative zero."""
    s = f"{v:.2f}"
    return "0.00" if s == "-0.00" else s


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A markdown table (:func:`jaxequiv.codec.report.markdown_table`) with floats as :func:`f2`."""
    return markdown_table(header, [[f2(v) if isinstance(v, float) else v for v in r] for r in rows])


def listing(values: Sequence[float]) -> str:
    return ", ".join(f2(v) for v in values)


def run_line(res: dict) -> str:
    """Where and how the numbers were made: commit, machine, load, libraries, wall time per stage."""
    p = res["provenance"]
    git, m, v = p["git"], p["machine"], p["versions"]
    libs = ", ".join(f"{k} {v[k]}" for k in v if v[k])
    stages = ", ".join(f"{k} {t:.0f} s" for k, t in res["timings_s"].items() if k != "total")
    load = "/".join(f"{x:.1f}" for x in m["load_avg"])
    command = " ".join(["/".join(Path(p["argv"][0]).parts[-3:]), *p["argv"][1:]])
    late = " (committed after the run started)" if git.get("committed_after_start") else ""
    return (f"Run: commit `{git['short']}`{' (with uncommitted changes)' if git['dirty'] else ''}{late}, "
            f"{p['started'][:10]}, `{command}`, {m['cpu']['model']} "
            f"({m['cpu']['cores']} cores, shared; load average {load} over 1/5/15 min at the end), {libs}. "
            f"Wall time **{p['wall_s']:.0f} s** ({stages}).")


# ---------------------------------------------------------------------------------------------------------
# CODEC on images


def codec_blocks(res: dict) -> dict[str, str]:
    cfg = res["provenance"]["config"]
    sites = res["sites"]
    n = len(sites)
    out = {"codec-run": "\n".join([
        run_line(res), "",
        f"Network: ResNet with basic blocks {cfg['blocks']} = {n} residual blocks, width {cfg['width']}, "
        f"{res['parameters']:,} parameters, trained on {res['dataset']} ({cfg['epochs']} epochs on a "
        f"class-balanced {cfg['n_train']:,}-image subset of the {res['images']['train']:,} training images): "
        f"**{100 * res['test_accuracy']:.2f} % test accuracy** on the {res['images']['test']:,} test images. "
        f"Analysed: {res['n_analysed']:,} class-balanced test images."])}
    fit = res["sae_fit"]
    rows = [[s, fit["contribution"][s]["r2_codec"], fit["activation"][s]["r2_codec"],
             fit["contribution"][s]["explained_variance"], fit["activation"][s]["explained_variance"],
             f"{fit['contribution'][s]['n_alive']} / {fit['activation'][s]['n_alive']}"] for s in sites]
    out["codec-sae"] = table(
        ["block", "R² (CODEC) contrib.", "R² (CODEC) act.", "explained variance contrib.", "explained variance act.",
         "alive modes contrib. / act."], rows)
    out["codec-findings"] = table(
        ["", "finding (paper, ResNet-50)", "here", "evidence (blocks in order)"],
        [[k, CLAIMS[k], "**holds**" if f["holds"] else "**does not hold**", f["evidence"]]
         for k, f in sorted(res["findings"].items())])
    mc, ch = res["median_top_corr"], res["channel_median_top_corr"]
    ab, pr = res["ablate_auc"], res["preserve_auc"]
    rows = [[s, res["hoyer_contrib_median"][i], res["hoyer_act_median"][i], res["decorrelation_median"][i],
             f"{res['dim_contrib'][i]} / {res['dim_act'][i]}", mc["contribution"][i], mc["activation"][i],
             ch["contribution"][i], ch["activation"][i], ab["contribution"][i], ab["activation"][i],
             pr["contribution"][i], pr["activation"][i]] for i, s in enumerate(sites)]
    out["codec-blocks"] = table(
        ["block", "Hoyer contrib.", "Hoyer act.", "-corr(neg, pos)", "dim contrib. / act.", "modes top corr contrib.",
         "act.", "channels top corr contrib.", "act.", "ablate contrib.", "ablate act.", "preserve contrib.",
         "preserve act."], rows)
    sc = res["superclass"]
    classes = sc["ablate"]["classes"]
    rows = [[f"{c}{' (concept)' if c in classes else ''}", f"{f2(sc['ablate']['before'][c])} -> "
             f"{f2(sc['ablate']['after'][c])}", f"{f2(sc['preserve']['before'][c])} -> "
             f"{f2(sc['preserve']['after'][c])}"] for c in range(len(sc["ablate"]["before"]))]
    pct = cfg["superclass_pct"]
    out["codec-superclass"] = "\n".join([
        f"Concept classes {classes} at {', '.join(sc['ablate']['sites'])} together; ablate {pct[0]:g} % / preserve "
        f"{pct[1]:g} % of the concept's channels; top-1 accuracy before -> after:", "",
        table(["class", f"ablate {pct[0]:g} %", f"preserve {pct[1]:g} %"], rows)])
    return out


def f2n(v: float | None) -> str:
    """:func:`f2`, or a dash for a value that was NaN (None in the JSON)."""
    return "—" if v is None else f2(v)


def ci(m: Sequence[float | None]) -> str:
    """``mean [lo, hi]`` of a (mean, lo, hi) triple; the interval left out when it is undefined (None)."""
    if m[0] is None:
        return "—"
    return f2n(m[0]) if m[1] is None else f"{f2n(m[0])} [{f2n(m[1])}, {f2n(m[2])}]"


def deep_pair(d: dict[str, Sequence[float | None]], fmt: Callable[[float], str] = f2) -> str:
    """``contribution / activation`` means over the two deepest blocks of ``{"contribution": [...], ...}`` (a dash
    where a value is missing)."""
    mean = lambda v: None if None in v[-2:] else sum(v[-2:]) / 2  # noqa: E731
    return " / ".join("—" if m is None else fmt(m) for m in (mean(d["contribution"]), mean(d["activation"])))


def codec_sensitivity_blocks(res: dict) -> dict[str, str]:
    """The sensitivity sweep (``sensitivity.py``): (a)-(d) per width, (e) per budget and theta, the grid, (f), the
    PCA / NMF baselines and the tests of the explanations."""
    cfg = res["provenance"]["config"]
    ws = res["widths"]
    deep = "the two deepest blocks"
    nets = "; ".join(f"width {w['network']['width']}: {w['network']['parameters']:,} parameters, "
                     f"{100 * w['network']['test_accuracy']:.2f} % test accuracy" for w in ws)
    net = ws[0]["network"]["config"]
    steps = {e["epochs"]: e["steps"] for e in ws[0]["summary"]["fit"]}
    resumed = res["resumed_widths"]
    # a run that resumed from widths measured earlier: its wall time is the sum of every width's stage times
    line = run_line({**res, "provenance": {**res["provenance"], "wall_s": res["timings_s"]["total"]}})
    out = {"codec-sens-run": "\n".join([
        line + (f" Widths {resumed} were measured by an earlier process of the same sweep (its stage times are "
                "included)." if resumed else ""), "",
        f"Networks: the `{cfg['base']}` preset of `config.json` with {json.dumps(cfg['network'])} "
        f"({ws[0]['network']['dataset']}, {net['n_train']:,} training images, {net['epochs']} epochs, "
        f"{ws[0]['network']['n_analysed']:,} analysed test images); {nets}. "
        + (f"SAE grid: expansion {cfg['expansions']} x theta {cfg['thetas']} x lambda_D {cfg['l1s']} x seeds "
           f"{cfg['seeds']} on contributions and on activations (one `train_many` job per block and budget) at widths "
           f"{cfg['grid_widths']}; the paper's slice (expansion {cfg['slice_expansion']}, lambda_D "
           f"{cfg['slice_l1']:g}, every theta and seed) at the others. " if cfg["grid_widths"] else
           f"SAEs: the paper's slice (expansion {cfg['slice_expansion']}, lambda_D {cfg['slice_l1']:g}, theta "
           f"{cfg['thetas']} x seeds {cfg['seeds']}) on contributions and on activations at every width (one "
           f"`train_many` job per block and budget). ")
        + "Budgets: "
        f"{', '.join(f'{e:g} epochs ({steps[e]} steps)' for e in cfg['budgets'])} of batch {cfg['sae_batch']}, Adam "
        f"lr {cfg['sae_lr']:g}. Finding (f): the slice SAEs with theta {cfg['intervention_thetas']} at the largest "
        f"budget, {cfg['trials']} trials x percentages {cfg['percentages']}, {cfg['images_per_class']} images per "
        f"class, the same trials for every SAE. PCA / NMF: as many components as those SAEs have alive modes "
        f"(median over seeds). Intervals: 95 % t intervals over the {len(cfg['seeds'])} SAE seeds (each seed's value "
        f"averaged over the other pooled settings); for (a)-(d) and the raw channels, bootstrap over the images."])}
    rows = []
    for w in ws:
        r = w["representation"]
        sure = sum(lo > 0 for lo, _ in r["hoyer_gap_ci"])
        b = min(range(len(r["hoyer_gap"])), key=lambda i: r["hoyer_gap"][i])
        rows.append([w["network"]["width"], f"{sure}/{len(r['hoyer_gap'])}",
                     ci([r["hoyer_gap"][b], *r["hoyer_gap_ci"][b]]) + f" ({w['network']['sites'][b]})",
                     ci([r["spearman_hoyer"], *r["spearman_hoyer_ci"]]),
                     ci([r["spearman_decorrelation"], *r["spearman_decorrelation_ci"]]),
                     " ".join(f"{c}/{a}" for c, a in zip(r["dim_contrib"], r["dim_act"])),
                     f"{sum(x >= 0.95 for x in r['dim_contrib_higher_frac'])}/{len(r['dim_contrib'])}"])
    out["codec-sens-ad"] = table(
        ["width", "(a) blocks with contrib. sparser (CI > 0)", "(a) smallest Hoyer gap contrib. - act. [CI]",
         "(b) Spearman(depth, Hoyer contrib.) [CI]", "(c) Spearman(depth, -corr(neg, pos)) [CI]",
         "(d) dim contrib./act. per block", "(d) blocks with dim contrib. > act. in >= 95 % of resamples"], rows)
    rows = []
    for w in ws:
        s = w["summary"]
        nb = len(w["network"]["sites"])
        for e, fit in zip(s["e"], s["fit"]):
            rows.append([w["network"]["width"], f"{e['epochs']:g} ({fit['steps']})", e["theta"], deep_pair(fit["r2"]),
                         deep_pair(fit["alive"]), f"{sum(g[0] is not None and g[0] > 0 for g in e['gap'])}/{nb}",
                         ci(e["deep_gap"]), ci(e["gap"][-1]), f"{e['holds']}/{e['n']}"])
    out["codec-sens-e"] = table(
        ["width", "SAE epochs (steps)", "theta", f"R² (CODEC) contrib. / act., {deep}",
         f"alive modes contrib. / act., {deep}", "blocks with contrib. modes more selective (seed mean)",
         f"(e) gap contrib. - act., mean of {deep} [CI]", "(e) gap at the last block [CI]",
         "(e) holds (seeds)"], rows)
    rows = []
    for w in ws:
        for g in w["summary"]["grid"]:
            rows.append([w["network"]["width"], f"{g['epochs']:g}", g["expansion"], g["theta"],
                         f"{f2n(g['alive']['contribution'])} / {f2n(g['alive']['activation'])}",
                         f"{f2n(g['r2']['contribution'])} / {f2n(g['r2']['activation'])}", ci(g["deep_gap"]),
                         f"{g['holds']}/{g['n']}"])
    if rows:  # only a sweep with grid widths has this table
        out["codec-sens-grid"] = table(
            ["width", "SAE epochs", "expansion", "theta", f"alive modes contrib. / act., {deep}",
             f"R² (CODEC) contrib. / act., {deep}", "(e) gap, deep blocks [CI]", "(e) holds (seeds x lambda_D)"],
            rows)
    parts = []
    for w in ws:
        s = w["summary"]
        base = s["baselines"]
        for f in s["f"]:
            rows = [[site, ci(f["contrib"][i]), ci(f["act"][i]),
                     *(f"{f2n(b['ablate']['contribution'][i])} / {f2n(b['ablate']['activation'][i])}"
                       for b in base.values())] for i, site in enumerate(w["network"]["sites"])]
            verdicts = ", ".join(f"{m.upper()} {'holds' if b['f_holds'] else 'does not hold'}"
                                 for m, b in base.items())
            parts += [f"Width {w['network']['width']}, theta {f['theta']}, {f['epochs']:g} SAE epochs: (f) holds for "
                      f"{f['holds']}/{f['n']} SAE seeds; {verdicts}.", "",
                      table(["block", "ablate SAE contrib. [CI]", "ablate SAE act. [CI]",
                             *(f"ablate {m.upper()} contrib. / act." for m in base)], rows), ""]
    out["codec-sens-f"] = "\n".join(parts[:-1])
    rows = []
    for w in ws:
        s = w["summary"]
        top = cfg["budgets"][-1]
        e = next(e for e in s["e"] if e["epochs"] == top and e["theta"] == cfg["intervention_thetas"][0])
        f = s["f"][0]
        fit = s["fit"][s["e"].index(e)]
        rows.append([w["network"]["width"], f"STSAE (theta {e['theta']}, {e['epochs']:g} epochs)",
                     deep_pair(fit["alive"]), deep_pair(fit["r2"]), ci(e["deep_gap"]), f"{e['holds']}/{e['n']} seeds",
                     f"{f['holds']}/{f['n']} seeds"])
        for m, b in s["baselines"].items():
            rows.append([w["network"]["width"], m.upper(), deep_pair(b["k"], "{:g}".format), deep_pair(b["r2"]),
                         f2n(b["deep_gap"]), "holds" if b["e_holds"] else "does not hold",
                         "holds" if b["f_holds"] else "does not hold"])
    out["codec-sens-baselines"] = table(
        ["width", "modes", f"modes contrib. / act., {deep}", f"R² (CODEC) contrib. / act., {deep}",
         f"(e) gap, {deep}", "(e)", "(f)"], rows)
    rows = []
    for w in ws:
        x = w["summary"]["explanations"]
        u, m, c = x["undertrained"], x["more_modes"], x["class_coded"]
        rows += [
            [w["network"]["width"], "undertrained SAEs",
             f"deep (e) gap {ci(u['gap_lo'])} at {u['budgets'][0]:g} epochs -> {ci(u['gap_hi'])} at "
             f"{u['budgets'][1]:g} (change {ci(u['delta'])}) while the contribution SAEs' R² rose by "
             f"{f2n(u['r2_gain_deep'])}", f"**{u['verdict']}**"],
            [w["network"]["width"], "more modes per class",
             f"deep (e) gap over the {m['pairs']} pairs (same seed, {u['budgets'][1]:g} epochs, both SAEs with R² "
             f">= {f2n(m['min_r2'])}) where the contribution SAE has no more alive modes than the activation SAE: "
             f"{ci(m['gap_fewer_or_equal'])} (mean alive modes contrib. "
             f"{f2n(m['alive_deep']['contribution'])}, act. {f2n(m['alive_deep']['activation'])})",
             f"**{m['verdict']}**"],
            [w["network"]["width"], "deep activations already class-coded",
             "raw channels, contrib. - act. top corr at the deep blocks "
             + ", ".join(ci([g, *gc]) for g, gc in zip(c["channel_gap"], c["channel_gap_ci"]))
             + "; PCA / NMF deep (e) gap " + " / ".join(f2n(v) for v in c["baseline_deep_gap"].values())
             + f"; activation dimensionality {c['dim_act_deep']} of at most 9", f"**{c['verdict']}**"]]
    out["codec-sens-explanations"] = table(["width", "explanation", "evidence", "verdict"], rows)
    return out


# ---------------------------------------------------------------------------------------------------------
# Toy permutation detection


def _matrix(m: Sequence[Sequence[float]], names: Sequence[str]) -> str:
    short = [a.split()[0] for a in names]
    rows = [[short[i], *(f"**{f2(v)}**" if i == j else f2(v) for j, v in enumerate(r))] for i, r in enumerate(m)]
    return table(["", *short], rows)


def toy_blocks(res: dict) -> dict[str, str]:
    cfg = res["provenance"]["config"]
    names = list(res["interpretations"])
    kinds = res["kinds"]
    acc = {k: kinds[k]["module_accuracy_vs_tracr"] for k in ("compiled", "trained")}
    out = {"toy-run": "\n".join([
        run_line(res), "",
        f"Settings: n = {cfg['n']}, N = {cfg['n_data']} task inputs, {cfg['variants']} compiled variants per "
        f"subroutine (variant 0 = tracr's model, the base) and {cfg['seeds']} trained imitators per subroutine "
        f"({cfg['steps']} steps, batch {cfg['batch_size']}, {cfg['n_train']} training inputs), {cfg['impls']} "
        f"implementations per interpretation, distinguishability {cfg['straps']} rounds × {cfg['trials']} trials, "
        f"congruity {cfg['rounds']} rounds, seed {cfg['seed']}. Module accuracy against tracr on the chains' "
        f"inputs: compiled variants {', '.join(f'{s} {f2(a)}' for s, a in acc['compiled'].items())}; trained "
        f"imitators {', '.join(f'{s} {f2(a)}' for s, a in acc['trained'].items())}."])}
    fm = {k: kinds[k]["congruity_family_means"] for k in kinds}
    out["toy-congruity-means"] = table(
        ["mean off-diagonal congruity", "paper", "trained imitators", "compiled variants"],
        [[k, TOY_PAPER[k], f2(fm["trained"][k]), f2(fm["compiled"][k])] for k in TOY_PAPER])
    dm = {(k, s): kinds[k][f"distinguishability{s}_family_means"] for k in kinds for s in ("", "_fixed_split")}
    out["toy-distinguishability-means"] = table(
        ["mean off-diagonal distinguishability rate", "trained", "compiled", "trained, one split",
         "compiled, one split"],
        [[k, *(f2(dm[(kind, s)][k]) for s in ("", "_fixed_split") for kind in ("trained", "compiled"))]
         for k in TOY_PAPER])
    out["toy-congruity-trained"] = _matrix(kinds["trained"]["congruity"], names)
    out["toy-congruity-compiled"] = _matrix(kinds["compiled"]["congruity"], names)
    out["toy-distinguishability-trained"] = _matrix(kinds["trained"]["distinguishability"], names)
    return out


def _mean_ci(s: dict, k: str) -> str:
    """Family ``k``'s mean congruity of the toy setting ``s`` with its interval."""
    return ci([s["congruity_family_means"][k], *s["congruity_family_ci95"][k]])


def toy_sensitivity_blocks(sens: dict) -> dict[str, str]:
    """The toy's sensitivity sweep and the grid-vs-congruity decomposition (``equiv_toy/sensitivity.py``)."""
    cfg, parts = sens["config"], {p["n"]: p for p in sens["parts"]}
    n0, N0, T = cfg["toy"]["n"], str(cfg["toy"]["n_data"]), cfg["toy"]["trials"]
    p, m = sens["provenance"], sens["provenance"]["machine"]
    keys = ("within sorting", "within counting", "across families")
    stages = lambda part: ", ".join(  # noqa: E731
        f"{k} {v:.0f} s" for k, v in part["timings_s"].items() if k != "total")
    out = {"toy-sensitivity-run": (
        f"Run: commit `{p['git']['short']}`{' (with uncommitted changes)' if p['git']['dirty'] else ''}, "
        f"{p['started'][:10]}, `experiments/equiv_toy/sensitivity.py`, {m['cpu']['model']} ({m['cpu']['cores']} "
        f"cores, shared; load average {'/'.join(f'{x:.1f}' for x in m['load_avg'])}). n run: "
        f"{', '.join(map(str, sens['ns_run']))} of {', '.join(map(str, cfg['ns']))}; N: "
        f"{', '.join(map(str, cfg['sizes']))} (at n = {n0}). Wall time per stage: "
        f"{'; '.join(f'n = {n}: {stages(part)}' for n, part in sorted(parts.items()))}. "
        f"{cfg['toy']['impls']} implementations per interpretation, congruity {cfg['toy']['rounds']} rounds, "
        f"grid {cfg['toy']['straps']} rounds × {T} trials, {cfg['n_boot']} bootstrap resamples, one ridge split "
        f"per setting.")}
    rows = []
    for n, part in sorted(parts.items()):
        s = part["settings"][N0]
        acc = min(part["module_accuracy_vs_tracr"].values())
        rows.append([n, *(_mean_ci(s, k) for k in keys),
                     *(f2(s["distinguishability_family_means"][k]) for k in keys), f2(acc)])
    head = ["congruity within sorting [95% CI]", "within counting", "across families", "grid: within sorting",
            "within counting", "across"]
    out["toy-sensitivity-n"] = table([f"n (N = {N0})", *head, "worst module accuracy"], rows)
    rows = [[N, *(_mean_ci(s, k) for k in keys),
             *(f2(s["distinguishability_family_means"][k]) if "distinguishability" in s else "—" for k in keys)]
            for N, s in sorted(parts[n0]["settings"].items(), key=lambda kv: int(kv[0]))]
    out["toy-sensitivity-N"] = table([f"N (n = {n0})", *head], rows)
    s = parts[n0]["settings"][N0]
    fm = lambda name: [f2(s[f"{name}_family_means"][k]) for k in keys]  # noqa: E731
    out["toy-grid-why"] = table(
        [f"n = {n0}, N = {N0}, trained imitators", *keys],
        [["grid rate, measured", *fm("distinguishability")],
         [f"grid rate expected from w_grid (Binomial power, T = {T})", *fm("grid_expected")],
         ["w_grid = P(R²(X→X') > R²(X→Y)) per trial", *fm("grid_win")],
         ["w_grid over within-pairs sharing no module block", *fm("grid_win_no_shared_blocks")],
         ["graded grid score 1 − \\|w_ab + w_ba − 1\\|", *fm("grid_graded")],
         ["w_congruity = P(R²(base→own) > R²(base→other))", *fm("congruity_win")],
         ["congruity expected 1 − \\|w_ab + w_ba − 1\\|", *fm("congruity_expected")],
         ["congruity, measured", *fm("congruity")]])
    by = s["r2_within_by_shared_blocks"]
    out["toy-grid-why-r2"] = table(
        ["ridge R² between implementations", "mean", "pairs"],
        [*([f"same interpretation, {k} shared module block(s)", f2(v[0]), v[1]] for k, v in by.items()),
         ["same interpretation, all", f2(s["r2_within"]), "—"],
         *([f"different interpretations, {k}", f2(v), "—"] for k, v in s["r2_across"].items())])
    out["toy-grid-explanation"] = _toy_grid_explanation(s, T, cfg["toy"]["impls"])
    return out


def _toy_grid_explanation(s: dict, T: int, impls: int) -> str:
    """The grid-vs-congruity explanation, its numbers and verdicts computed from one setting's results."""
    keys = ("within sorting", "within counting", "across families")
    fam = lambda name: {k: s[f"{name}_family_means"][k] for k in keys}  # noqa: E731
    wg, wc, g, gx, gg, c = (fam(x) for x in ("grid_win", "congruity_win", "distinguishability", "grid_expected",
                                             "grid_graded", "congruity"))
    w0 = fam("grid_win_no_shared_blocks")
    # separation of each family from the across pairs, in the direction each statistic separates
    sep = lambda d, sign: ", ".join(  # noqa: E731
        f"{f2(sign * (d['across families'] - d[k]))} {k.split()[1]}" for k in keys[:2])
    listed = lambda d: ", ".join(f"{f2(d[k])} {k}" for k in keys)  # noqa: E731
    k_star = next(k for k in range(T + 1) if k / T - 1.96 * np.sqrt(k / T * (1 - k / T) / T) > 0.5)
    shared = np.mean(list(s["shared_blocks_within"].values()))
    return "\n".join([
        f"1. *Both statistics see the same kind of event, with different anchors.* Per trial, the grid's win "
        f"probability w_grid is {listed(wg)}; congruity's w (its tracr chain as anchor) is {listed(wc)}.",
        f"2. *The grid thresholds w.* With T = {T} trials a round is flagged only with at least {k_star} wins, so "
        f"its rate is P(Binomial(T, w) ≥ {k_star}), a step function of w: the expected rates {listed(gx)} match "
        f"the measured {listed(g)}. Where w_grid is on the flat parts of that step the grid cannot show a graded "
        f"family difference even if w had one; a graded score on the grid's own comparison, 1 − \\|w_ab + w_ba − "
        f"1\\|, gives {listed(gg)} (congruity: {listed(c)}).",
        f"3. *Shared module blocks.* Two of the {impls} implementations of one interpretation share on average "
        f"{f2(shared)} module blocks exactly (the same imitator of the same module on the same inputs); over the "
        f"within-pairs that share none, w_grid is {listed(w0)}. The mean R² in the table above is dominated by a "
        f"few fits with large negative held-out R² (target features nearly constant on the 10% test split), which "
        f"is why both statistics use ranks.",
        f"4. *Verdict.* Separation of each family from the across pairs (across minus within for the grid rate "
        f"and w, within minus across for congruity): grid rate {sep(g, 1)}; congruity {sep(c, -1)}. (i) The "
        f"anchor: a trial anchored on an implementation is less graded by family than one anchored on the tracr "
        f"chain (w_grid {sep(wg, 1)}; congruity's w {sep(wc, 1)}). (ii) The threshold: every family "
        f"mean of w_grid is at least {f2(min(wg.values()))}, where the z-test's power is already "
        f"{f2(min(gx.values()))}, so the expected rates span only {f2(min(gx.values()))} to "
        f"{f2(max(gx.values()))}. (iii) Shared module blocks matter little: without them w_grid moves by at most "
        f"{f2(max(abs(wg[k] - w0[k]) for k in keys))}."])


# ---------------------------------------------------------------------------------------------------------
# IOI


def _family_ci(m: dict) -> str:
    """A family mean ``{"mean", "ci95"}`` with its interval."""
    return ci([m["mean"], *m["ci95"]])


def ioi_blocks(res: dict) -> dict[str, str]:
    cfg = res["provenance"]["config"]
    names = res["names"]
    models = res["models"]
    tasks = list(dict.fromkeys(t for m in models.values() for t in m["task_accuracy"]))
    rows = []
    for a in names:
        m = models[a]
        imp = np.asarray(m["head_importance"])
        k = max(1, int(round(cfg["circuit_frac"] * imp.size)))
        kept = np.sort(imp.ravel())[:k]
        rows.append([a, f2(m["accuracy"]), f2(m["logit_diff"]),
                     *(f2(m["task_accuracy"][t]) if t in m["task_accuracy"] else "—" for t in tasks),
                     f2(m["train_loss"]), f2(m["kl_clean_corrupt"]), f"{f2(kept.min())}–{f2(kept.max())}",
                     " ".join(f"`{c}`" for c in m["circuit"])])
    fams = res["families"]
    out = {"ioi-run": "\n".join([
        run_line(res), "",
        "Families: " + "; ".join(f"`{f}` = {', '.join(f'{k}={v}' for k, v in spec['arch'].items())}, trained on "
                                 f"{', '.join(f'{t} {w:g}' for t, w in spec['mix'].items())} (fact seed "
                                 f"{spec['fact_seed']})" for f, spec in fams.items()) + ". "
        f"Sizes (layers L, d_model): {', '.join(f'{n}L{d}' for n, d in cfg['sizes'])}, {cfg['n_head']} heads, "
        f"{cfg['seeds']} seeds each; {cfg['n_train']:,} training sentences per family corpus, {cfg['steps']:,} Adam "
        f"steps (lr {cfg['lr']:g}, batch {cfg['batch_size']}); {cfg['n_eval']} evaluation prompts; circuit = "
        f"lowest-KL {100 * cfg['circuit_frac']:g} % of heads; GetImpl patches each other head with probability "
        f"{cfg['p']:g} from the {cfg['source']} prompts, {cfg['impls']} implementations per model; "
        f"{cfg['rounds']} congruity rounds ({cfg['sweep_rounds']} per sensitivity setting). Per model (IO-vs-S "
        "accuracy on the evaluation prompts, chance 0.5; top-1 accuracy of the answer word on 100 held-out "
        "sentences per task of the model's corpus; KL at the last token of the counterfactual prompts before any "
        "patching, and of the circuit's heads when patched back alone):", "",
        table(["model", "IO-vs-S acc.", "logit diff.", *(f"{t} acc." for t in tasks), "final loss",
               "KL(clean ‖ counterf.)", "KL, circuit heads", "circuit"], rows)])}
    simil = res["similarity"]
    out["ioi-similarity"] = table(
        ["base models' last-token residual streams", "within families", "across", "difference",
         "permutation p (distinct relabellings)", "95% prompt-bootstrap CI of the difference"],
        [[m, f2(v["within"]), f2(v["across"]), f2(v["difference"]), f"{v['p_permutation']:.3f} ({v['relabellings']})",
          f"[{f2(v['difference_ci95'][0])}, {f2(v['difference_ci95'][1])}]" if "difference_ci95" in v else "—"]
         for m, v in simil.items()])
    mat = np.asarray(res["congruity"])
    short = [a.replace(" ", "/") for a in names]
    out["ioi-congruity"] = table(["", *short], [[short[i], *(f"**{f2(v)}**" if i == j else f2(v)
                                                             for j, v in enumerate(r))] for i, r in enumerate(mat)])
    fm = res["congruity_family_means"]
    groups = [g for g in fm if g.startswith("within")]
    out["ioi-summary"] = table(
        ["mean congruity [95% CI over rounds]", "paper (GPT-2 / Pythia, pretrained)", "here (two trained families)"],
        [*([g, IOI_PAPER["within family"] if k == 0 else "", _family_ci(fm[g])] for k, g in enumerate(groups)),
         ["across families", IOI_PAPER["across families"], _family_ci(fm["across"])],
         ["model with itself", IOI_PAPER["model with itself"], f"{f2(fm['self']['min'])}–{f2(fm['self']['max'])}"]])
    rows = []
    for e in res["sensitivity"]:
        st, sim = e["setting"], e["impl_similarity"]
        rows.append([f"{e['factor']}" + ("" if e["value"] is None else f" = {e['value']}"),
                     f"p {st['p']:g}, circuit {100 * st['circuit_frac']:g} %, {st['source']}, {st['measure']}",
                     e["rounds"], *(_family_ci(e["family_means"][g]) for g in [*groups, "across"]),
                     f2(e["family_means"]["self"]["mean"]), f2(e["impl_distance"]),
                     f"{f2(sim['own'])} / {f2(sim['within'])} / {f2(sim['across'])}"])
    out["ioi-sensitivity"] = table(
        ["setting", "GetImpl, measure", "rounds", *groups, "across", "self", "impl. distance",
         "measure: own / within / across impl."], rows)
    return out


# ---------------------------------------------------------------------------------------------------------
# CODEC on simulated retina


def _ari(m: dict) -> str:
    return f2(m["ari_mean"]) if m["ari_min"] == m["ari_max"] else \
        f"{f2(m['ari_mean'])} ({f2(m['ari_min'])}–{f2(m['ari_max'])})"


def retina_blocks(res: dict) -> dict[str, str]:
    cfg = res["provenance"]["config"]
    cl, primary = res["clustering"], res["primary"]
    out = {"retina-run": "\n".join([
        run_line(res), "",
        f"Cells: {res['n_cells']} LN cells, {cfg['per_type']} of each of the {len(res['types'])} types, on a "
        f"{cfg['size']} x {cfg['size']} field with {cfg['lags']} frames of history. Movies: {res['frames']['train']:,} "
        f"training bins (white-noise and 1/f segments of {cfg['segment']} frames alternating), "
        f"{res['frames']['white']:,} held-out white-noise and {res['frames']['pink']:,} held-out 1/f bins; mean rate "
        f"{f2(res['mean_rate']['white'])} (white) and {f2(res['mean_rate']['pink'])} (1/f) spikes per bin. CNN: conv "
        f"{cfg['channels'][0]} x {cfg['kernels'][0]}², conv {cfg['channels'][1]} x {cfg['kernels'][1]}², dense, "
        f"softplus; {res['parameters']:,} parameters, {cfg['epochs']} epochs of Poisson loss (Adam, lr {cfg['lr']:g}; "
        f"loss {f2(res['train_loss']['first'])} -> {f2(res['train_loss']['last'])}). IG {cfg['ig_steps']} steps "
        f"toward the surprisal on the {res['frames']['pink']:,} held-out 1/f bins; median completeness gap "
        f"{', '.join(f'{s} {v:.1e}' for s, v in res['completeness_median_rel_gap'].items())} (of the surprisal's "
        f"std). STSAE per layer and source: K = {cfg['sae_expansion']} d, theta {cfg['sae_theta']:g}, l1 "
        f"{cfg['sae_l1']:g}, {cfg['sae_steps']:,} steps, {cfg['sae_seeds']} seeds; k-means with k = "
        f"{len(res['types'])} (50 restarts); permutation null of {cfg['null_rounds']:,} shuffles of the types."])}
    hc = res["heldout_corr"]
    out["retina-fit"] = table(
        ["held-out movie", "model vs spikes (median cell)", "true rate vs spikes (ceiling)", "model / ceiling",
         "model vs true rate (median)", "model vs true rate (worst cell)"],
        [[m, float(np.median(c["counts"])), float(np.median(c["ceiling"])),
          float(np.median(np.divide(c["counts"], c["ceiling"]))), float(np.median(c["true_rate"])),
          float(min(c["true_rate"]))] for m, c in hc.items()])
    out["retina-ari"] = table(
        ["cells clustered by", "features (first seed)", "ARI vs types, k = 4 (mean (range) over SAE seeds)",
         "permutation p (largest)", "silhouette k", "ARI at silhouette k", "k = 2: ARI vs ON/OFF",
         "k = 2: ARI vs sustained/transient"],
        [[f"**{n}**" if n == primary else n, m["runs"][0]["n_features"], _ari(m), f"{m['p_max']:.4f}",
          "/".join(str(r["k_silhouette"]) for r in m["runs"]), listing([r["ari_silhouette"] for r in m["runs"]]),
          listing([r["ari_k2_polarity"] for r in m["runs"]]), listing([r["ari_k2_kinetics"] for r in m["runs"]])]
         for n, m in cl.items()])
    act, chan = cl[primary.replace("contribution", "activation")], cl[primary.replace("modes", "channels")]
    p, sta = cl[primary], cl["STA temporal filter (white noise)"]
    sil = sorted({r["k_silhouette"] for r in p["runs"]})
    rows = [
        ["the cell types can be recovered from the simulated data (classical STA typing)", "—",
         sta["ari_mean"] > 0.9, f"ARI {_ari(sta)}"],
        ["the silhouette of k-means of the cells by contribution-mode usage picks k = 3", "k = 3 (k in 2..8)",
         sil == [3], f"k = {'/'.join(map(str, sil))}"],
        ["the clusters of contribution-mode usage match the cell types above chance", "— (not measurable on "
         "recorded cells)", p["p_max"] < 0.01, f"ARI {_ari(p)}, permutation p <= {p['p_max']:.4f}"],
        ["contribution modes recover the types better than activation modes of the same layer", "—",
         p["ari_min"] > act["ari_max"], f"{_ari(p)} vs {_ari(act)}"],
        ["the SAE adds to the raw [negative, positive] channel contributions", "—",
         p["ari_min"] > chan["ari_max"], f"{_ari(p)} vs {_ari(chan)}"]]
    out["retina-findings"] = table(
        ["claim", "paper (salamander retina models)", "here", "evidence"],
        [[c, paper, "**holds**" if ok else "**does not hold**", ev] for c, paper, ok, ev in rows])
    fit = res["sae_fit"]
    out["retina-sae"] = table(
        ["layer", "source", "R² (CODEC), per seed", "alive modes, per seed"],
        [[s, src, listing(fit[src][s]["r2_codec"]), "/".join(map(str, fit[src][s]["n_alive"]))]
         for src in fit for s in fit[src]])
    return out


# experiment folder -> {results file in it: the renderer of the README blocks made from it}
EXPERIMENTS: dict[str, dict[str, Callable[[dict], dict[str, str]]]] = {
    "codec_images": {RESULTS: codec_blocks, SENSITIVITY: codec_sensitivity_blocks,
                     FASHION: lambda res: renamed(codec_sensitivity_blocks(res), "codec-sens", "codec-fashion")},
    "equiv_toy": {RESULTS: toy_blocks, SENSITIVITY: toy_sensitivity_blocks},
    "equiv_ioi": {RESULTS: ioi_blocks, WIDE: lambda res: renamed(ioi_blocks(res), "ioi", "ioi-wide")},
    "codec_retina": {RESULTS: retina_blocks}}


def renamed(blocks: dict[str, str], prefix: str, new: str) -> dict[str, str]:
    """``blocks`` with the name prefix ``prefix`` replaced by ``new``: one renderer for two results files of a
    README (e.g. two presets of one sweep)."""
    return {new + k.removeprefix(prefix) if k.startswith(prefix) else k: v for k, v in blocks.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="only check that every README is up to date")
    p.add_argument("--root", default=str(HERE), help="the experiments folder")
    args = p.parse_args(argv)
    stale = []
    for name, renderers in EXPERIMENTS.items():
        folder = Path(args.root) / name
        pieces = []
        for rel, blocks in renderers.items():
            results = folder / rel
            if not results.exists():
                raise SystemExit(f"{results} is missing: run the experiment's full run (see {folder / 'README.md'})")
            pieces += [(*markers(k, rel), v) for k, v in blocks(json.loads(results.read_text())).items()]
        if not regenerate(folder / "README.md", pieces, check=args.check):
            stale.append(str(folder / "README.md"))
    if args.check and stale:
        print(f"out of date: {', '.join(stale)}; run python experiments/readme_tables.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
