"""tracr bridge: compiled RASP programs run in jaxequiv's transformer exactly as in tracr's own haiku forward."""

import itertools

import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("tracr")
from tracr.compiler import lib  # noqa: E402
from tracr.rasp import rasp  # noqa: E402

from jaxequiv.models import tracr as jt  # noqa: E402
from jaxequiv.sites import run  # noqa: E402

VOCAB, LEN = (0, 1, 2), 3


@pytest.fixture(scope="module")
def sort_model():
    program = lib.make_sort(rasp.tokens, rasp.tokens, max_seq_len=LEN, min_key=1)
    return program, jt.compile_rasp(program, VOCAB, LEN)


def _assembled(program):
    return next(v for k, v in jt._CACHE.items() if k[0] == program.unique_id)


def test_sort_matches_tracr_forward_on_every_input(sort_model):
    program, m = sort_model
    seqs = list(itertools.product(VOCAB, repeat=LEN))
    ids = m.encode(seqs)
    assert ids.shape == (len(seqs), LEN + 1) and (ids[:, 0] == m.input_values.index("BOS")).all()
    names = [f"h.{i}{s}" for i in range(m.config.n_layer) for s in (".resid_mid", "")]
    out, cap = run(m.model, jnp.asarray(ids), capture=["embed", *names])
    asm = _assembled(program)
    ref = asm.forward(asm.params, jnp.asarray(ids))
    t = ref.transformer_output
    # every residual (after each attention and MLP sub-layer) and the unembedded output are identical
    np.testing.assert_array_equal(np.asarray(cap["embed"]), np.asarray(t.input_embeddings))
    for name, res in zip(names, t.residuals):
        np.testing.assert_array_equal(np.asarray(cap[name]), np.asarray(res))
    np.testing.assert_array_equal(np.asarray(out).argmax(-1), np.asarray(ref.unembedded_output))
    # and the decoded outputs are the RASP program's own evaluation
    assert m.apply(seqs) == [program(list(s)) for s in seqs]


def test_residual_labels_describe_the_embedding(sort_model):
    _, m = sort_model
    assert len(m.residual_labels) == m.config.d_model
    ids = m.encode([[2, 0, 1]])
    _, cap = run(m.model, jnp.asarray(ids), capture="embed")
    e = np.asarray(cap["embed"])[0]
    on = [{m.residual_labels[j] for j in np.flatnonzero(row)} for row in e]
    assert on[0] == {"tokens:BOS", "one"}  # BOS position has no positional embedding
    assert on[1] == {"tokens:2", "indices:0", "one"} and on[3] == {"tokens:1", "indices:2", "one"}


def test_numerical_causal_program_and_cache():
    program = lib.make_frac_prevs(rasp.tokens == 1)
    m = jt.compile_rasp(program, {0, 1}, 4, causal=True)
    assert m.config.causal and not m.categorical and m.config.d_vocab_out == 1
    n_cached = len(jt._CACHE)
    assert jt.compile_rasp(program, {0, 1}, 4, causal=True).residual_labels == m.residual_labels
    assert len(jt._CACHE) == n_cached  # compiled once per process
    seqs = [list(s) for s in itertools.product((0, 1), repeat=4)]
    ids = jnp.asarray(m.encode(seqs))
    asm = _assembled(program)
    np.testing.assert_array_equal(
        np.asarray(m(ids))[..., 0], np.asarray(asm.forward(asm.params, ids).unembedded_output)
    )
    np.testing.assert_allclose(m.apply(seqs), [program(s) for s in seqs], atol=1e-6)
    # causal: outputs at a position do not depend on later tokens
    a, b = m.apply([[1, 0, 1, 1], [1, 0, 0, 0]])
    assert a[:2] == b[:2]


def test_bad_input(sort_model):
    _, m = sort_model
    with pytest.raises(ValueError, match="not in the compiled vocabulary"):
        m.encode([[0, 1, 7]])
    with pytest.raises(ValueError, match="exceed max_seq_len"):
        m.encode([[0, 1, 2, 0]])
    with pytest.raises(ValueError, match="different lengths"):
        m.encode([[0, 1], [0, 1, 2]])
    with pytest.raises(TypeError, match="RASP SOp"):
        jt.compile_rasp("sort", VOCAB, LEN)
    bad = rasp.numerical(rasp.SequenceMap(lambda x, i: x + i, rasp.tokens, rasp.indices))
    with pytest.raises(ValueError, match="tracr cannot compile"):
        jt.compile_rasp(bad, VOCAB, LEN)
    with pytest.raises(ValueError, match="vocab is empty"):
        jt.compile_rasp(rasp.tokens == 1, [], LEN)
