"""tracr bridge: compiled RASP programs run in jaxequiv's transformer exactly as in tracr's own haiku forward."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("tracr")
from tracr.compiler import compiling, lib  # noqa: E402
from tracr.rasp import rasp  # noqa: E402

from experiments.equiv_toy.programs import subroutine  # noqa: E402
from jaxequiv.models import tracr as jt  # noqa: E402
from jaxequiv.network import Network  # noqa: E402
from jaxequiv.sites import run  # noqa: E402

N = 3  # the toy --quick subroutines: length 3, tokens {0..3}


def _assembled(program):
    return next(v for k, v in jt._CACHE.items() if k[0] == program.unique_id)


def _ours(m, ids, names):
    net = Network.from_module(m.model, (None,), "int")
    return jax.jit(lambda p, x: run(net.apply, p, x, capture=names))(net.params, jnp.asarray(ids))


@pytest.mark.parametrize("name", ["sort", "hist"])
def test_matches_tracr_forward_at_every_residual_on_every_input(toy_tracr, name):
    m, program = toy_tracr[name], subroutine(name, N)
    seqs = list(itertools.product(range(N + 1), repeat=N))
    ids = m.encode(seqs)
    assert ids.shape == (len(seqs), N + 1) and (ids[:, 0] == m.input_values.index("BOS")).all()
    names = [f"h.{i}{s}" for i in range(m.config.n_layer) for s in (".resid_mid", "")]
    out, cap = _ours(m, ids, ["embed", *names])
    asm = _assembled(program)
    ref = jax.jit(asm.forward)(asm.params, jnp.asarray(ids))
    t = ref.transformer_output
    # every residual (after each attention and MLP sub-layer) and the unembedded output are identical
    np.testing.assert_array_equal(np.asarray(cap["embed"]), np.asarray(t.input_embeddings))
    for site, res in zip(names, t.residuals):
        np.testing.assert_array_equal(np.asarray(cap[site]), np.asarray(res))
    np.testing.assert_array_equal(np.asarray(out).argmax(-1), np.asarray(ref.unembedded_output))
    # and the decoded outputs are the RASP program's own evaluation
    assert m.decode(out) == [program(list(s)) for s in seqs]


def test_jitted_assembly_gives_tracr_parameters():
    program = rasp.Map(lambda x: x + 1, rasp.tokens).named("inc")
    ours = jt.compile_rasp(program, {0, 1}, 2)
    plain = compiling.compile_rasp_to_model(program, vocab={0, 1}, max_seq_len=2, compiler_bos="BOS")
    asm = _assembled(program)
    assert asm.params.keys() == plain.params.keys()
    for k in plain.params:
        for n in plain.params[k]:
            np.testing.assert_array_equal(np.asarray(asm.params[k][n]), np.asarray(plain.params[k][n]))
    assert ours.apply([[0, 1], [1, 1]]) == [[1, 2], [2, 2]]


def test_residual_labels_describe_the_embedding(toy_tracr):
    m = toy_tracr["sort"]
    assert len(m.residual_labels) == m.config.d_model
    _, cap = _ours(m, m.encode([[2, 0, 1]]), ["embed"])
    e = np.asarray(cap["embed"])[0]
    on = [{m.residual_labels[j] for j in np.flatnonzero(row)} for row in e]
    assert on[0] == {"tokens:BOS", "one"}  # BOS position has no positional embedding
    assert on[1] == {"tokens:2", "indices:0", "one"} and on[3] == {"tokens:1", "indices:2", "one"}


def test_numerical_causal_program_and_cache():
    program = lib.make_frac_prevs(rasp.tokens == 1)
    m = jt.compile_rasp(program, {0, 1}, 3, causal=True)
    assert m.config.causal and not m.categorical and m.config.d_vocab_out == 1
    n_cached = len(jt._CACHE)
    assert jt.compile_rasp(program, {0, 1}, 3, causal=True).residual_labels == m.residual_labels
    assert len(jt._CACHE) == n_cached  # compiled once per process
    seqs = [list(s) for s in itertools.product((0, 1), repeat=3)]
    ids = jnp.asarray(m.encode(seqs))
    asm = _assembled(program)
    out, _ = _ours(m, ids, [])
    np.testing.assert_array_equal(np.asarray(out)[..., 0], np.asarray(jax.jit(asm.forward)(asm.params, ids).unembedded_output))
    np.testing.assert_allclose(m.decode(out), [program(s) for s in seqs], atol=1e-6)
    # causal: outputs at a position do not depend on later tokens
    a, b = m.decode(_ours(m, m.encode([[1, 0, 1], [1, 0, 0]]), [])[0])
    assert a[:2] == b[:2]


def test_bad_input(toy_tracr):
    m = toy_tracr["sort"]
    with pytest.raises(ValueError, match="not in the compiled vocabulary"):
        m.encode([[0, 1, 7]])
    with pytest.raises(ValueError, match="exceed max_seq_len"):
        m.encode([[0, 1, 2, 0]])
    with pytest.raises(ValueError, match="different lengths"):
        m.encode([[0, 1], [0, 1, 2]])
    with pytest.raises(TypeError, match="RASP SOp"):
        jt.compile_rasp("sort", range(4), N)
    bad = rasp.numerical(rasp.SequenceMap(lambda x, i: x + i, rasp.tokens, rasp.indices))
    with pytest.raises(ValueError, match="tracr cannot compile"):
        jt.compile_rasp(bad, range(4), N)
    with pytest.raises(ValueError, match="vocab is empty"):
        jt.compile_rasp(rasp.tokens == 1, [], N)
    with pytest.raises(ValueError, match="max_seq_len must be a positive integer"):
        jt.compile_rasp(rasp.tokens == 1, [0, 1], 0)
