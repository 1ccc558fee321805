"""IOI template generator: structure of prompts and counterfactuals, determinism, tokenisation, bad input."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxequiv.data.ioi import NAMES, NUMBERS, PLACES, TEMPLATES, WordVocab, ioi_prompts, task_corpus


def test_deterministic_for_seed_and_differs_across_seeds():
    assert ioi_prompts(20, seed=3) == ioi_prompts(20, seed=3)
    assert ioi_prompts(20, seed=3).prompts != ioi_prompts(20, seed=4).prompts


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 30), kind=st.sampled_from(["ABBA", "BABA", "mixed"]))
def test_prompt_structure(seed, n, kind):
    d = ioi_prompts(n, seed=seed, prompt_type=kind)
    vocab = WordVocab.for_ioi()
    assert len(d) == n
    for p, c, io, s, order, t in zip(d.prompts, d.counterfactuals, d.io, d.s, d.order, d.template):
        wp, wc = vocab.tokenize(p), vocab.tokenize(c)
        assert io != s and io in NAMES and s in NAMES
        # clean: IO once, S twice; IO introduced first in ABBA, second in BABA
        assert wp.count(io) == 1 and wp.count(s) == 2
        assert (wp.index(io) < wp.index(s)) == (order == "ABBA")
        # counterfactual: same positions, only the last subject mention changed, to IO
        assert len(wc) == len(wp)
        diff = [i for i, (x, y) in enumerate(zip(wp, wc)) if x != y]
        assert len(diff) == 1 and wp[diff[0]] == s and wc[diff[0]] == io
        assert diff[0] == max(i for i, w in enumerate(wp) if w == s)
        assert 0 <= t < len(TEMPLATES)
        if kind != "mixed":
            assert order == kind
    if kind == "mixed":
        assert d.order[::2] == ["ABBA"] * len(d.order[::2]) and d.order[1::2] == ["BABA"] * len(d.order[1::2])


def test_sentences_and_encoding_roundtrip():
    d = ioi_prompts(12, seed=1)
    vocab = WordVocab.for_ioi()
    ids, lengths = vocab.encode(d.sentences())
    assert ids.dtype == np.int32 and ids.shape == (12, lengths.max())
    for row, n, sent, io in zip(ids, lengths, d.sentences(), d.io):
        assert [vocab.words[i] for i in row[:n]] == vocab.tokenize(sent)
        assert (row[n:] == 0).all() and vocab.words[row[n - 1]] == io
    assert list(vocab.ids(d.s)) == [vocab.index[s] for s in d.s]
    cf = d.sentences(counterfactual=True)
    assert all(x.endswith(" " + s) for x, s in zip(cf, d.s))


def test_bad_input():
    with pytest.raises(ValueError, match="positive integer"):
        ioi_prompts(0)
    with pytest.raises(ValueError, match="prompt_type"):
        ioi_prompts(3, prompt_type="AABB")
    with pytest.raises(ValueError, match="two distinct"):
        ioi_prompts(3, names=["Mary", "Mary"])
    with pytest.raises(ValueError, match="placeholders"):
        ioi_prompts(3, templates=["no names here"])
    vocab = WordVocab.from_texts(["Mary gave a book to John"])
    with pytest.raises(ValueError, match="not in the vocabulary"):
        vocab.encode(["Mary gave a ring to John"])
    with pytest.raises(ValueError, match="more than length"):
        vocab.encode(["Mary gave a book to John"], length=3)
    with pytest.raises(ValueError, match="not in the vocabulary"):
        vocab.ids(["Zed"])


def test_task_corpus_mixes_tasks_deterministically():
    mix = {"ioi": 2, "induction": 1, "counting": 1, "facts": 1}
    text = task_corpus(400, mix, seed=1, fact_seed=0)
    assert text == task_corpus(400, mix, seed=1, fact_seed=0) and len(text) == 400
    vocab = WordVocab.for_tasks()
    ids, lengths = vocab.encode(text)  # every word is in the vocabulary
    kinds = {"induction": 0, "counting": 0, "facts": 0, "ioi": 0}
    homes = {}
    for line in text:
        w = vocab.tokenize(line)
        if w[0] == "Names":  # the list, "again", the same list
            k = w.index("again")
            assert w[1:k] == w[k + 1:] and 3 <= k - 1 <= 5
            kinds["induction"] += 1
        elif w[0] == "Count":
            assert w[-2] == "makes" and NUMBERS.index(w[-1]) + 1 == len(w) - 3 and len(set(w[1:-2])) == 1
            kinds["counting"] += 1
        elif w[1] == "lives":
            assert w[-1] in PLACES and homes.setdefault(w[0], w[-1]) == w[-1]  # one fixed home per name
            kinds["facts"] += 1
        else:
            assert w[-1] in NAMES
            kinds["ioi"] += 1
    assert kinds["ioi"] > max(kinds["induction"], kinds["counting"], kinds["facts"]) > 40
    other = task_corpus(400, {"facts": 1}, seed=1, fact_seed=1)
    assert {w.split()[0]: w.split()[-1] for w in other} != homes  # another fact seed, other facts
    only = task_corpus(50, {"ioi": 1}, templates=TEMPLATES[:1])
    assert all(line.startswith("Then,") for line in only)
    with pytest.raises(ValueError, match="mix must map tasks"):
        task_corpus(5, {"poetry": 1})
    with pytest.raises(ValueError, match="positive integer"):
        task_corpus(0, {"ioi": 1})
