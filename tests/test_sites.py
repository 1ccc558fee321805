"""Semantics of the sites mechanism under jit, vmap, grad and nesting."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxequiv.sites import (Add, Replace, Scale, SiteInfo, UnknownSiteError, declare_aliases, list_sites, match, run,
                            site)


def params(seed=0):
    k1, k2 = jax.random.split(jax.random.key(seed))
    return {"w1": jax.random.normal(k1, (5, 7)), "w2": jax.random.normal(k2, (7, 3))}


def model(p, x):
    """h = tanh(x W1); y = h W2 with sites at h and y."""
    h = site("hidden", jnp.tanh(x @ p["w1"]))
    return site("out", h @ p["w2"])


def model_ablated_by_hand(p, x, channel):
    h = jnp.tanh(x @ p["w1"]).at[:, channel].set(0.0)
    return h @ p["w2"]


X = jax.random.normal(jax.random.key(1), (4, 5))


def test_inactive_site_is_identity():
    p = params()
    np.testing.assert_array_equal(model(p, X), jnp.tanh(X @ p["w1"]) @ p["w2"])


def test_capture_returns_true_values():
    p = params()
    out, cap = run(model, p, X, capture=["hidden", "out"])
    np.testing.assert_allclose(cap["hidden"], jnp.tanh(X @ p["w1"]), rtol=1e-6)
    np.testing.assert_array_equal(cap["out"], out)
    assert list(cap) == ["hidden", "out"]


def test_capture_patterns_fnmatch():
    _, cap = run(model, params(), X, capture="*")
    assert set(cap) == {"hidden", "out"}
    _, cap = run(model, params(), X, capture="hid*")
    assert set(cap) == {"hidden"}


def test_zero_add_keeps_output_and_gives_hand_gradient():
    p = params()
    delta = jnp.zeros((4, 7))
    out, _ = run(model, p, X, edits={"hidden": Add(delta)})
    np.testing.assert_allclose(out, model(p, X), rtol=1e-6)
    grad = jax.grad(lambda d: run(model, p, X, edits={"hidden": Add(d)})[0].sum())(delta)
    # d sum(h W2) / dh = W2 summed over outputs, the same for every example.
    expected = jnp.broadcast_to(p["w2"].sum(1), (4, 7))
    np.testing.assert_allclose(grad, expected, rtol=1e-6)


def test_gradients_of_all_sites_from_one_backward_pass():
    p = params()
    deltas = {"hidden": jnp.zeros((4, 7)), "out": jnp.zeros((4, 3))}

    def f(ds):
        return run(model, p, X, edits={k: Add(v) for k, v in ds.items()})[0].sum()

    g = jax.grad(f)(deltas)
    np.testing.assert_allclose(g["out"], jnp.ones((4, 3)))
    np.testing.assert_allclose(g["hidden"], jnp.broadcast_to(p["w2"].sum(1), (4, 7)), rtol=1e-6)


def test_scale_zero_equals_zeroing_in_model_code():
    p = params()
    mask = jnp.ones(7).at[2].set(0.0)
    out, _ = run(model, p, X, edits={"hidden": Scale(mask)})
    np.testing.assert_allclose(out, model_ablated_by_hand(p, X, 2), rtol=1e-6)


def test_replace_is_patching_from_a_second_run():
    p = params()
    x2 = X[::-1] * 2.0
    _, cap2 = run(model, p, x2, capture="hidden")
    patched, _ = run(model, p, X, edits={"hidden": Replace(cap2["hidden"])})
    np.testing.assert_allclose(patched, model(p, x2), rtol=1e-6)


def test_replace_where_limits_patch_to_mask():
    p = params()
    donor = jnp.full((4, 7), 3.0)
    where = jnp.zeros(7, bool).at[1].set(True)
    _, cap = run(model, p, X, edits={"hidden": Replace(donor, where=where)}, capture="hidden")
    clean = jnp.tanh(X @ p["w1"])
    np.testing.assert_allclose(cap["hidden"][:, 1], 3.0)
    np.testing.assert_allclose(cap["hidden"][:, 0], clean[:, 0], rtol=1e-6)


def test_callable_edit():
    p = params()
    out, _ = run(model, p, X, edits={"out": lambda v: v * 2})
    np.testing.assert_allclose(out, 2 * model(p, X), rtol=1e-6)


def test_under_jit_vmap_grad():
    p = params()
    masks = jnp.eye(7)  # 7 single-channel ablations at once

    @jax.jit
    def ablate_all(p, x):
        return jax.vmap(lambda m: run(model, p, x, edits={"hidden": Scale(1 - m)})[0])(masks)

    outs = ablate_all(p, X)
    for c in range(7):
        np.testing.assert_allclose(outs[c], model_ablated_by_hand(p, X, c), rtol=1e-5, atol=1e-6)

    # grad through a captured value, vmapped over parameter sets
    ps = jax.tree_util.tree_map(lambda *a: jnp.stack(a), params(0), params(1))

    def captured_norm(p):
        return jnp.sum(run(model, p, X, capture="hidden")[1]["hidden"] ** 2)

    g = jax.jit(jax.vmap(jax.grad(captured_norm)))(ps)
    g0 = jax.grad(captured_norm)(params(0))
    np.testing.assert_allclose(g["w1"][0], g0["w1"], rtol=1e-4, atol=1e-6)


def test_nested_runs_apply_outer_then_inner():
    p = params()
    mask = jnp.ones(7).at[0].set(0.0)

    def inner(p, x):
        return run(model, p, x, capture="hidden", edits={"hidden": Add(1.0)})

    (out, inner_cap), outer_cap = run(inner, p, X, capture="hidden", edits={"hidden": Scale(mask)})
    clean = jnp.tanh(X @ p["w1"])
    np.testing.assert_allclose(outer_cap["hidden"], clean * mask, rtol=1e-6)
    np.testing.assert_allclose(inner_cap["hidden"], clean * mask + 1.0, rtol=1e-6)
    np.testing.assert_allclose(out, (clean * mask + 1.0) @ p["w2"], rtol=1e-5)


def test_unknown_site_lists_available():
    with pytest.raises(UnknownSiteError, match=r"hidden.*out|out.*hidden") as e:
        run(model, params(), X, capture="layer*")
    assert "layer*" in str(e.value)
    with pytest.raises(UnknownSiteError, match="nope"):
        run(model, params(), X, edits={"nope": Scale(0.0)})


def test_duplicate_site_name_is_an_error():
    def twice(x):
        return site("a", site("a", x))

    with pytest.raises(ValueError, match="marked twice"):
        run(twice, X, capture="a")


def test_axes_must_match_rank():
    with pytest.raises(ValueError, match="axis names"):
        run(lambda x: site("a", x, axes=("batch",)), X, capture="a")


def test_list_sites_without_data():
    p = params()
    info = list_sites(model, p, jax.ShapeDtypeStruct((2, 5), jnp.float32))
    assert info == {
        "hidden": SiteInfo((2, 7), jnp.float32, ("batch", "channel")),
        "out": SiteInfo((2, 3), jnp.float32, ("batch", "channel")),
    }
    conv = list_sites(
        lambda x: site("c", x, axes=("batch", "height", "width", "channel")),
        jax.ShapeDtypeStruct((2, 4, 4, 3), jnp.float32),
    )["c"]
    assert conv.spatial_axes == (1, 2) and conv.channels == 3
    heads = SiteInfo((2, 6, 4, 8), jnp.float32, ("batch", "token", "head", "channel"))
    assert heads.spatial_axes == (1,) and heads.channels == 32


def test_list_sites_traces_once_per_function_and_shapes():
    import gc

    from jaxequiv import sites as S

    traces = []

    def counted(p, x):
        traces.append(x.shape)
        return model(p, x)

    p = params()
    first = list_sites(counted, p, X)
    first["mutated"] = None  # a caller's copy: the cache keeps its own table
    again = list_sites(counted, p, jnp.ones_like(X))  # other values, same shapes: no new trace
    assert traces == [X.shape] and "mutated" not in again and again == list_sites(model, p, X)
    wider = list_sites(counted, p, jnp.ones((6, 5)))  # other shapes: traced again, shapes follow
    assert len(traces) == 2 and wider["hidden"].shape == (6, 7)
    del counted
    gc.collect()
    assert all(getattr(f, "__name__", "") != "counted" for f in S._LISTED)  # an entry goes with its function


def test_match_patterns():
    names = ["layer1.0", "layer1.1", "layer2.0", "fc"]
    assert match("layer1.*", names) == ["layer1.0", "layer1.1"]
    assert match(["fc", "layer2*"], names) == ["layer2.0", "fc"]
    with pytest.raises(UnknownSiteError):
        match("conv*", names)


def aliased_model(p, x):
    """``model`` whose sites also answer to another tool's names."""
    declare_aliases({"blocks.0.hook_post": "hidden", "hook_logits": "out"})
    return model(p, x)


def test_aliases_capture_edit_and_match():
    p = params()
    out, cap = run(aliased_model, p, X, capture=["blocks.*", "hidden"])
    assert list(cap) == ["blocks.0.hook_post", "hidden"]  # a site is reported under each name asked for
    np.testing.assert_array_equal(cap["blocks.0.hook_post"], cap["hidden"])
    mask = jnp.ones(7).at[2].set(0.0)
    edited, _ = run(aliased_model, p, X, edits={"blocks.0.hook_post": Scale(mask)})
    np.testing.assert_allclose(edited, model_ablated_by_hand(p, X, 2), rtol=1e-6)
    table = list_sites(aliased_model, p, X)
    assert list(table) == ["hidden", "out"] and table["hidden"].aliases == ("blocks.0.hook_post",)
    assert "hook_logits" in table and table["hook_logits"] is table["out"] and table.get("nope") is None
    assert match(["hook_*", "hid*"], table) == ["hidden", "hook_logits"]  # under the name each pattern matched
    assert match("*", table) == ["hidden", "out"]  # a site name wins over its aliases
    with pytest.raises(UnknownSiteError, match="aliases"):
        run(aliased_model, p, X, capture="blocks.1.*")
    assert aliased_model(p, X).shape == (4, 3)  # outside run the declaration is a no-op


def test_an_alias_names_one_site():
    def conflicting(p, x):
        declare_aliases({"a": "hidden"})
        declare_aliases({"a": "out"})
        return model(p, x)

    with pytest.raises(ValueError, match="alias 'a' declared for both"):
        run(conflicting, params(), X)


def test_no_runtime_cost_when_inactive():
    """With no active run, the jitted program of a model with sites equals the one without them."""
    p = params()
    plain = jax.jit(lambda p, x: jnp.tanh(x @ p["w1"]) @ p["w2"]).lower(p, X).as_text()
    marked = jax.jit(model).lower(p, X).as_text()
    strip = lambda s: [l for l in s.splitlines() if "stablehlo" in l and "loc(" not in l]  # noqa: E731
    assert len(strip(plain)) == len(strip(marked))
