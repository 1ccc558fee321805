"""IOI experiment: patching importance, GetImpl, congruity of models of different widths, the --quick run, and
the --checkpoint path on random Hugging Face GPT-2 / GPT-NeoX folders with their own tokenizer.json."""

import json

import jax
import numpy as np
import pytest
from flax import nnx

from experiments.equiv_ioi import run as ioi
from experiments.equiv_toy.run import equal_width
from jaxequiv import equivalence as eq
from jaxequiv.data.ioi import WordVocab, ioi_prompts
from jaxequiv.models.transformer import Transformer, TransformerConfig
from jaxequiv.network import Network
from jaxequiv.sites import run


@pytest.fixture(scope="module")
def task():
    tok = ioi.Tokenizer()
    _, (t,) = ioi.tokenize_task(ioi_prompts(12, seed=0), [tok])
    return tok, t


def _net(vocab_size, n_ctx, naming, d):
    extra = {"positional": "rotary", "parallel_residual": True} if naming == "neox" else {}
    cfg = TransformerConfig(vocab_size=vocab_size, n_layer=2, n_head=2, d_model=d, n_ctx=n_ctx, naming=naming, **extra)
    return Network.from_module(Transformer(cfg, nnx.Rngs(0)), (None,), "int")


def test_importance_circuit_and_implementations(task):
    tok, t = task
    assert t["clean"].shape == t["corrupt"].shape and (t["clean"] != t["corrupt"]).sum(1).tolist() == [1] * 12
    last = t["lengths"] - 1
    net = _net(len(tok.vocab), t["clean"].shape[1], "gpt2", 16)
    imp = ioi.head_importance(net, t["clean"], t["corrupt"], last)
    assert imp.shape == (2, 2) and (imp >= -1e-6).all() and imp.max() > 0
    z_names, resid = ioi.head_sites(net)
    assert z_names == ["h.0.attn.z", "h.1.attn.z"] and resid == ["embed", "h.0", "h.1"]
    circuit = ioi.circuit_units(imp, 0.25, z_names)
    l, h = np.unravel_index(imp.argmin(), imp.shape)
    assert circuit == [f"{z_names[l]}[{h}]"]  # the head whose clean activation restores the clean output best
    base, impls = ioi.implementation_reprs(net, t["clean"], t["corrupt"], t["lengths"], circuit, 3, seed=0)
    assert base.shape == (12, 3 * 16) and impls.shape == (3, 12, 3 * 16)
    # the representation is the residual stream at the last real prompt token
    _, cap = jax.jit(lambda p, x: run(net.apply, p, x, capture=resid))(net.params, t["clean"])
    want = np.concatenate([np.asarray(cap[k])[np.arange(12), last] for k in resid], 1)
    np.testing.assert_allclose(base, want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="does not cover the task's tokens"):
        ioi.check_vocab(t["clean"], 5)


def test_congruity_of_models_with_different_widths():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(30, 3))
    models = {}
    for name, d in (("wide", 6), ("narrow", 4)):
        mix = rng.normal(size=(3, d))
        models[name] = ((z @ mix).astype(np.float32), (z @ mix + 0.3 * rng.normal(size=(3, 30, d))).astype(np.float32))
    r = eq.congruity(*models["wide"], *models["narrow"], key=0, n_rounds=8, chunk=1)
    assert 0 <= r.ci_low <= r.score <= r.ci_high <= 1
    # exactly the result of the width-equalised (ridge-invariant) embedding, where both have 12 features
    (b1, b2), (i1, i2) = equal_width([m[0] for m in models.values()]), equal_width([m[1] for m in models.values()])
    same = eq.congruity(b1, i1, b2, i2, key=0, n_rounds=8, chunk=1)
    np.testing.assert_array_equal(same.indicators, r.indicators)


def test_family_contrast_is_an_exact_permutation_test():
    fams = ["a", "a", "b", "b"]
    mat = np.array([[1, .9, .1, .2], [.9, 1, .3, .1], [.1, .3, 1, .8], [.2, .1, .8, 1]])
    r = ioi.family_contrast(mat, fams)
    assert r["within"] == pytest.approx(0.85) and r["across"] == pytest.approx(0.175)
    # 6 distinct relabellings; the observed one and its a<->b swap are the largest
    assert r["relabellings"] == 6 and r["p_permutation"] == pytest.approx(2 / 6)
    with pytest.raises(ValueError, match="within and across"):
        ioi.family_contrast(mat[:2, :2], ["a", "b"])


def test_family_means_bootstrap_the_rounds():
    rng = np.random.default_rng(0)
    ind = rng.choice([0.0, 0.5, 1.0], size=(3, 3, 40, 2))
    score = 1 - np.abs(ind.sum(-1).mean(-1) - 1)
    cm = eq.CongruityMatrix(("x", "y", "z"), score, score, score, ind)
    m = ioi.family_means(cm, ["a", "a", "b"], n_boot=300, seed=0)
    assert set(m) == {"within a", "across", "self"} and m["within a"]["pairs"] == 1 and m["across"]["pairs"] == 2
    assert m["within a"]["mean"] == pytest.approx(score[0, 1])
    assert m["across"]["mean"] == pytest.approx((score[0, 2] + score[1, 2]) / 2)
    for g in ("within a", "across"):
        assert m[g]["ci95"][0] <= m[g]["mean"] <= m[g]["ci95"][1]
    assert m["self"]["min"] == pytest.approx(np.diag(score).min())


@pytest.mark.timeout(600)
def test_quick_run_shows_family_structure(tmp_path):
    """One --quick run through the CLI (one test, so that pytest-xdist never runs it twice): provenance, and the
    claims the quick size shows: (1) the family structure exists: within-family linear CKA of the base models
    exceeds across-family CKA, with a prompt-bootstrap interval of the difference above 0; (2) models of
    different families are told apart by congruity (interval below each model's congruity with itself);
    (3) mean ablation moves the representation further than the counterfactual patch, and every sweep setting
    is scored."""
    with pytest.raises(ValueError, match="TransformerConfig keywords"):
        ioi.train_lms({"n_layer": 1, "width": 3}, np.zeros((4, 3), np.int32), np.full(4, 3), 10, ioi.QUICK)
    assert ioi.main(["--quick", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "results.json").read_text())
    k = len(ioi.model_specs(ioi.QUICK)) * ioi.QUICK.seeds
    assert len(res["names"]) == k and sorted(set(res["family_of"])) == sorted(ioi.FAMILIES)
    for f in ("congruity.png", "similarity.png", "sensitivity.png"):
        assert (tmp_path / f).exists()
    prov = res["provenance"]
    assert prov["config"]["steps"] == ioi.QUICK.steps and prov["seeds"]["run"] == ioi.QUICK.seed
    assert len(set(prov["seeds"]["model init"])) == k  # no two models share an initialisation
    assert prov["git"]["commit"] and prov["versions"]["flax"] and prov["wall_s"] >= res["seconds"]
    for m in res["models"].values():
        assert 0 <= m["accuracy"] <= 1 and np.isfinite(m["train_loss"]) and m["circuit"] and m["kl_clean_corrupt"] > 0
        assert set(m["task_accuracy"]) == set(ioi.FAMILIES[m["family"]]["mix"])

    cka = res["similarity"]["linear_cka"]
    assert cka["within"] > cka["across"] and cka["difference_ci95"][0] > 0, cka

    ci = np.array(res["congruity_ci95"])
    fam = res["family_of"]
    for i in range(k):
        for j in range(k):
            if fam[i] != fam[j]:
                assert ci[i, j, 1] < min(ci[i, i, 0], ci[j, j, 0]), (res["names"][i], res["names"][j])
    sweep = {(e["factor"], e["value"]): e for e in res["sensitivity"]}
    assert set(sweep) == {("default", None), ("source", "mean"), ("measure", "linear_cka")}
    assert sweep[("source", "mean")]["impl_distance"] > sweep[("default", None)]["impl_distance"]
    for e in sweep.values():
        assert all(0 <= g["mean"] <= 1 for g in e["family_means"].values() if "mean" in g)
        sim = e["impl_similarity"]
        assert sim["own"] > sim["across"]  # a model is closer to its own implementations than to another family's


@pytest.fixture(scope="module")
def hf_folders(tmp_path_factory):
    """A random GPT-2 and a random GPT-NeoX saved with save_pretrained, each with a word-level tokenizer.json."""
    transformers = pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")
    import torch

    words = {w: i for i, w in enumerate(WordVocab.for_ioi().words)}
    words["[UNK]"] = len(words)
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(words, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    torch.manual_seed(0)
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=len(words), n_positions=32, n_embd=16, n_layer=2, n_head=2))
    neox = transformers.GPTNeoXForCausalLM(transformers.GPTNeoXConfig(
        vocab_size=len(words), hidden_size=8, num_attention_heads=2, num_hidden_layers=2, intermediate_size=16,
        max_position_embeddings=32, rotary_pct=0.5))
    out = []
    for name, model in (("gpt2-tiny", gpt2), ("pythia-tiny", neox)):
        folder = tmp_path_factory.mktemp(name) / name
        model.save_pretrained(folder)
        tok.save(str(folder / "tokenizer.json"))
        out.append(folder)
    small = tmp_path_factory.mktemp("small") / "small-vocab"
    torch.manual_seed(1)
    transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=20, n_positions=32, n_embd=8, n_layer=1,
                                                         n_head=2)).save_pretrained(small)
    return out, small


def test_checkpoints_end_to_end(tmp_path, hf_folders):
    (gpt2, neox), small = hf_folders
    assert ioi.main(["--quick", "--checkpoint", str(gpt2), str(neox), "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["names"] == ["gpt2-tiny", "pythia-tiny"] and res["prompts_kept"] == ioi.QUICK.n_eval
    assert res["models"]["gpt2-tiny"]["repr_dim"] == 3 * 16 and res["models"]["pythia-tiny"]["repr_dim"] == 3 * 8
    assert all(m["tokenizer"].endswith("tokenizer.json") for m in res["models"].values())
    assert any(c.startswith("layers.") for c in res["models"]["pythia-tiny"]["circuit"])  # NeoX head sites
    mat = np.array(res["congruity"])
    assert mat.shape == (2, 2) and ((0 <= mat) & (mat <= 1)).all()
    assert res["family_of"] == ["gpt2", "pythia"] and "across" in res["congruity_family_means"]
    # a model without tokenizer.json whose vocabulary is smaller than the word-level IOI vocabulary
    with pytest.raises(ValueError, match="does not cover the task's tokens"):
        ioi.main(["--quick", "--checkpoint", str(small), "--out", str(tmp_path / "bad")])


def test_tokenizer_without_the_task_words(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel({"[UNK]": 0, "Mary": 1, "to": 2}, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.save(str(tmp_path / "tokenizer.json"))
    t = ioi.Tokenizer(str(tmp_path))
    assert t.encode("Mary to") == [1, 2] and t.name_id("Mary") == 1
    with pytest.raises(ValueError, match="does not cover the task's tokens"):
        ioi.tokenize_task(ioi_prompts(4, seed=0), [t])
