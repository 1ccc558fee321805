"""IOI experiment pieces on tiny random transformers (GPT-2 and NeoX namings): patching importance, GetImpl,
congruity, bad input."""

import numpy as np
import pytest
from flax import nnx

from experiments.equiv_ioi import run as ioi
from jaxequiv.data.ioi import WordVocab, ioi_prompts
from jaxequiv.models.transformer import Transformer, TransformerConfig
from jaxequiv.network import Network


@pytest.fixture(scope="module")
def batch():
    vocab = WordVocab.for_ioi()
    d = ioi_prompts(12, seed=0)
    clean, lens = vocab.encode(d.prompts)
    corrupt, _ = vocab.encode(d.counterfactuals, length=clean.shape[1])
    return vocab, clean, corrupt, lens - 1


@pytest.mark.parametrize("naming", ["gpt2", "neox"])
def test_importance_impls_and_congruity(batch, naming):
    vocab, clean, corrupt, last = batch
    extra = {"positional": "rotary", "parallel_residual": True} if naming == "neox" else {}
    cfg = TransformerConfig(vocab_size=len(vocab), n_layer=2, n_head=2, d_model=16, n_ctx=clean.shape[1],
                            naming=naming, **extra)
    net = Network.from_module(Transformer(cfg, nnx.Rngs(0)), (None,), "int")
    imp = ioi.head_importance(net, clean, corrupt, last, len(vocab))
    assert imp.shape == (2, 2) and (imp >= -1e-6).all() and imp.max() > 0
    # patching a head from the clean run into the clean run changes nothing
    np.testing.assert_allclose(ioi.head_importance(net, clean, clean, last), 0, atol=1e-6)
    circuit = imp >= np.sort(imp.ravel())[-1]
    base, impls = ioi.implementation_reprs(net, clean, corrupt, last, circuit, 4, seed=0)
    assert base.shape == (12, 3 * 16) and impls.shape == (4, 12, 3 * 16)
    c = ioi.congruity(base, impls, base, impls, repeats=4, seed=0)
    assert 0.0 <= c <= 1.0
    with pytest.raises(ValueError, match="outside the model's vocabulary"):
        ioi.head_importance(net, clean, corrupt, last, vocab_size=5)


def test_unknown_architecture(batch):
    vocab, clean, _, _ = batch
    with pytest.raises(ValueError, match="unknown architecture"):
        ioi.train_lms("cnn", clean, np.full(len(clean), clean.shape[1]), len(vocab), ioi.QUICK)
