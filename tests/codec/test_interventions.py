"""Mode interventions: masks, hand-edited weights as the reference, invariances of the protocol, bad input."""

from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxequiv.codec import interventions as I
from jaxequiv.network import Network
from jaxequiv.sae import Modes
from tests.nets import tiny_resnet

C_LAST = 8  # channels of the last block


@pytest.fixture(scope="module")
def tiny():
    model = tiny_resnet()
    net = Network.from_module(model, (8, 8, 1))
    r = np.random.default_rng(0)
    x = r.standard_normal((60, 8, 8, 1)).astype(np.float32)
    y = np.arange(60) % 5
    return net, x, y


def _logit_rank(net, x, y):
    logits = np.asarray(net(jnp.asarray(x)))
    return (logits > logits[np.arange(len(y)), y][:, None]).sum(1)


def test_channel_masks_reference():
    atoms = np.random.default_rng(1).standard_normal((3, 20)).astype(np.float32)
    atoms[0, 5] = atoms[0, 6]  # a tie: lower index first
    pct = [1, 5, 10, 50, 99, 100]
    ab = np.asarray(I.channel_masks(atoms, pct, "ablate"))
    pr = np.asarray(I.channel_masks(atoms, pct, "preserve"))
    assert ab.shape == (3, 6, 20)
    for a in range(3):
        order = sorted(range(20), key=lambda c: (-atoms[a, c], c))
        for j, p in enumerate(pct):
            n = int(np.floor(20 * p / 100))
            want = np.zeros(20)
            want[order[:n]] = 1
            np.testing.assert_array_equal(pr[a, j], want)
            np.testing.assert_array_equal(ab[a, j], 1 - want)


def test_bad_percentages_and_kind():
    for bad in ([0, 10], [101], [-5], []):
        with pytest.raises(ValueError, match="percentages"):
            I.channel_masks(np.ones(4), bad, "ablate")
    with pytest.raises(ValueError, match="kind"):
        I.channel_masks(np.ones(4), [10], "zero")


def test_concept_atom():
    atoms = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.testing.assert_allclose(I.concept_atom(atoms, [0.3, 0.1, 0.5]), atoms[0] + atoms[2])
    np.testing.assert_allclose(I.concept_atom(atoms, [0.1, 0.15, -0.2]), atoms[1])
    with pytest.raises(ValueError, match="concept_corr"):
        I.concept_atom(atoms, [0.1, 0.2])


def test_site_ablation_equals_hand_edited_weights(tiny):
    """Zeroing channels at a site == zeroing the weights that produce / consume them."""
    net, x, y = tiny
    r = np.random.default_rng(2)
    ks = (1, 2, 3, 4, 5)  # together these pin the rank of the true class
    # last block: its channels reach the logits only through fc's kernel rows
    m_last = (r.random((4, C_LAST)) > 0.5).astype(np.float32)
    hits = np.asarray(I.masked_hits(net, x, y, {"layer2.0": m_last}, ks))
    # stem: relu(bn1(conv1 x)) is 0 in a channel whose BatchNorm scale and bias are 0
    m_stem = (r.random((3, 4)) > 0.5).astype(np.float32)
    hits_stem = np.asarray(I.masked_hits(net, x, y, {"relu": m_stem}, ks))
    for i, m in enumerate(m_last):
        p = jax.tree_util.tree_map(lambda a: a, net.params)
        p["fc"]["kernel"][...] = p["fc"]["kernel"][...] * m[:, None]
        rank = _logit_rank(net.replace_params(p), x, y)
        np.testing.assert_array_equal(hits[i], rank[:, None] < np.array(ks))
    for i, m in enumerate(m_stem):
        p = jax.tree_util.tree_map(lambda a: a, net.params)
        p["bn1"]["scale"][...] = p["bn1"]["scale"][...] * m
        p["bn1"]["bias"][...] = p["bn1"]["bias"][...] * m
        rank = _logit_rank(net.replace_params(p), x, y)
        np.testing.assert_array_equal(hits_stem[i], rank[:, None] < np.array(ks))


def test_masked_hits_bad_input(tiny):
    net, x, y = tiny
    with pytest.raises(ValueError, match="not a site"):
        I.masked_hits(net, x, y, {"layer9.0": np.ones((1, 8))})
    with pytest.raises(ValueError, match=r"shape \(M, 8\)"):
        I.masked_hits(net, x, y, {"layer2.0": np.ones((1, 7))})
    with pytest.raises(ValueError, match="labels must have shape"):
        I.masked_hits(net, x, y[:-1], {"layer2.0": np.ones((1, 8))})
    # the logits site has one channel axis too: masking a logit is allowed and changes the prediction
    hits = np.asarray(I.masked_hits(net, x, y, {"fc": np.eye(5)[None, 0]}, (1,)))
    assert hits.shape == (1, 60, 1)


def test_draw_trials_deterministic_and_valid():
    y = np.repeat(np.arange(6), 12)
    d1 = I.draw_trials(jax.random.key(3), y, 15, 10)
    d2 = I.draw_trials(jax.random.key(3), y, 15, 10)
    np.testing.assert_array_equal(d1.index, d2.index)
    assert (d1.target != d1.off).all()
    np.testing.assert_array_equal(y[d1.index[:, 0]], np.repeat(d1.target[:, None], 10, 1))
    np.testing.assert_array_equal(y[d1.index[:, 1]], np.repeat(d1.off[:, None], 10, 1))
    assert all(len(set(row)) == 10 for row in d1.index.reshape(-1, 10))
    with pytest.raises(ValueError, match="lower n_images"):
        I.draw_trials(jax.random.key(0), y, 3, 13)


def test_mode_intervention_identity_cases_and_reference(tiny):
    net, x, y = tiny
    r = np.random.default_rng(4)
    atoms = r.standard_normal((6, C_LAST)).astype(np.float32)
    corr = r.uniform(-1, 1, (6, 5)).astype(np.float32)
    pct = [1, 25, 50, 100]  # 1% of 8 channels = 0 channels
    res = I.mode_intervention(net, x, y, "layer2.0", atoms, corr, jax.random.key(0), percentages=pct,
                              n_trials=6, n_images=4, trial_chunk=4)
    assert res.perturbed.shape == (2, 6, 4, 2, 2) and res.original.shape == (6, 2, 2)
    ok = res.original > 0
    np.testing.assert_array_equal(res.perturbed[0, :, 0][ok], res.original[ok])  # ablate 0 channels
    np.testing.assert_array_equal(res.perturbed[1, :, 3][ok], res.original[ok])  # preserve all channels
    np.testing.assert_allclose(res.ratio[0, :, 0][ok], 1.0)
    # reference: one trial, one percentage, by hand through masked_hits
    t, j = 2, 2
    top = atoms[np.argmax(corr[:, res.trials.target[t]])]
    mask = np.asarray(I.channel_masks(top, [pct[j]], "ablate"))
    idx = res.trials.index[t].reshape(-1)
    hits = np.asarray(I.masked_hits(net, x[idx], y[idx], {"layer2.0": mask}))[0].reshape(2, 4, 2)
    np.testing.assert_allclose(res.perturbed[0, t, j], hits.mean(1))


def test_mode_intervention_bad_input(tiny):
    net, x, y = tiny
    atoms, corr = np.ones((3, C_LAST)), np.ones((3, 5))
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="labels must have shape"):
        I.mode_intervention(net, x, y[:10], "layer2.0", atoms, corr, key, n_images=2)
    with pytest.raises(ValueError, match="not a site"):
        I.mode_intervention(net, x, y, "layer3.0", atoms, corr, key, n_images=2)
    with pytest.raises(ValueError, match="percentages"):
        I.mode_intervention(net, x, y, "layer2.0", atoms, corr, key, percentages=[0, 50], n_images=2)
    with pytest.raises(ValueError, match="channels"):
        I.mode_intervention(net, x, y, "layer2.0", np.ones((3, 4)), corr, key, n_images=2)
    with pytest.raises(ValueError, match="classes"):
        I.mode_intervention(net, x, y, "layer2.0", atoms, corr[:, :3], key, n_images=2)


def test_curves_auc_summary_reference():
    r = np.random.default_rng(5)
    pct = np.array([1, 10, 50, 99], np.float32)
    ratio = r.random((2, 7, 4, 2, 2))
    ratio[0, 3, 1, 0, 0] = np.nan
    mean, sem = I.curves(ratio)
    col = ratio[0, :, 1, 0, 0]
    col = col[~np.isnan(col)]
    np.testing.assert_allclose(mean[0, 1, 0, 0], col.mean())
    np.testing.assert_allclose(sem[0, 1, 0, 0], col.std(ddof=1) / np.sqrt(col.size))
    a = I.auc(mean, pct)
    x = pct.astype(float)
    y = mean[1, :, 1, 0]
    want = sum((x[i + 1] - x[i]) * (y[i] + y[i + 1]) / 2 for i in range(3))
    np.testing.assert_allclose(a[1, 1, 0], want)
    res = I.InterventionResult(pct, None, None, ratio, None)
    s = I.auc_summary(res)
    np.testing.assert_allclose(s, (a[:, 0] - a[:, 1]) / a[:, 1])
    with pytest.raises(ValueError, match="axis -3"):
        I.auc(mean[:, :3], pct)


def test_superclass_intervention(tiny):
    net, x, y = tiny
    r = np.random.default_rng(6)
    atoms = {"layer1.0": r.standard_normal((5, 4)), "layer2.0": r.standard_normal((6, C_LAST))}
    cc = {"layer1.0": r.uniform(-1, 1, 5), "layer2.0": r.uniform(-1, 1, 6)}
    keep = I.superclass_intervention(net, x, y, atoms, cc, 100, "preserve")
    ok = keep.original > 0
    np.testing.assert_allclose(keep.perturbed, keep.original)
    np.testing.assert_allclose(keep.change[ok], 0.0)
    res = I.superclass_intervention(net, x, y, atoms, cc, 50, "ablate", ks=(1,))
    masks = {s: np.asarray(I.channel_masks(I.concept_atom(atoms[s], cc[s]), [50], "ablate")) for s in atoms}
    hits = np.asarray(I.masked_hits(net, x, y, masks, (1,)))[0, :, 0]
    want = np.array([hits[y == c].mean() for c in range(5)])
    np.testing.assert_allclose(res.perturbed[:, 0], want)
    assert np.nanmax(np.abs(res.change)) <= 100
    with pytest.raises(ValueError, match="same sites"):
        I.superclass_intervention(net, x, y, atoms, {"layer1.0": cc["layer1.0"]}, 10, "ablate")


def _modes(r, k, c, n=60):
    """Modes of k latents over c channels on n examples; the last latent never fires."""
    codes = np.maximum(r.standard_normal((n, k)), 0).astype(np.float32)
    codes[:, -1] = 0
    return Modes(codes, (codes != 0).any(0), r.standard_normal((k, c)).astype(np.float32))


def test_mode_interventions_equal_per_site_calls(tiny):
    net, x, y = tiny
    r = np.random.default_rng(7)
    modes = {"layer1.0": _modes(r, 5, 4), "layer2.0": _modes(r, 6, C_LAST)}
    sel = {s: SimpleNamespace(corr=r.uniform(-1, 1, (int(m.alive.sum()), 5)).astype(np.float32))
           for s, m in modes.items()}
    got = I.mode_interventions(net, x, y, modes, sel, 2, percentages=[25, 100], n_trials=3, n_images=4)
    assert list(got) == ["layer1.0", "layer2.0"]
    for s, m in modes.items():
        want = I.mode_intervention(net, x, y, s, m.atoms[:-1], sel[s].corr, jax.random.key(2),
                                   percentages=[25, 100], n_trials=3, n_images=4)
        np.testing.assert_array_equal(got[s].perturbed, want.perturbed)
        np.testing.assert_array_equal(got[s].trials.index, want.trials.index)  # the same trials at every site
    with pytest.raises(ValueError, match=r"no entry for sites \['layer2.0'\]"):
        I.mode_interventions(net, x, y, modes, {"layer1.0": sel["layer1.0"]}, 0)


def test_superclass_interventions_against_numpy_concept_correlation(tiny):
    net, x, y = tiny
    r = np.random.default_rng(8)
    modes = {"layer1.0": _modes(r, 5, 4), "layer2.0": _modes(r, 6, C_LAST)}
    for m in modes.values():
        m.codes[:, 0] += 2.0 * np.isin(y, [1, 3])  # one mode follows the concept
    res = I.superclass_interventions(net, x, y, modes, [1, 3], ablate=25, preserve=50, ks=(1,))
    assert res.classes == (1, 3) and res.sites == list(modes) and res.percentages == {"ablate": 25.0, "preserve": 50.0}
    concept = np.isin(y, [1, 3]).astype(np.float64)
    corr = {s: np.array([np.corrcoef(col, concept)[0, 1] for col in m.codes[:, :-1].T.astype(np.float64)])
            for s, m in modes.items()}
    atoms = {s: m.atoms[:-1] for s, m in modes.items()}
    for kind, pct in res.percentages.items():
        want = I.superclass_intervention(net, x, y, atoms, corr, pct, kind, ks=(1,))
        np.testing.assert_array_equal(res.results[kind].perturbed, want.perturbed)
        np.testing.assert_array_equal(res.results[kind].original, want.original)
    with pytest.raises(ValueError, match="classes must name"):
        I.superclass_interventions(net, x, y, modes, [7])
    with pytest.raises(ValueError, match="classes must name"):
        I.superclass_interventions(net, x, y, modes, [])
    with pytest.raises(ValueError, match="at least one site"):
        I.superclass_interventions(net, x, y, {}, [1])
