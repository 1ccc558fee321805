"""Indirect-object-identification (IOI) prompts in the style of Wang et al. (2022), generated offline.

A sentence names two people, A and B, then repeats one of them (the subject S) as the giver; the answer is the
other one (the indirect object IO)::

    ABBA:  "When Mary and John went to the park, John gave a ball to" -> " Mary"
    BABA:  "When John and Mary went to the park, John gave a ball to" -> " Mary"

The counterfactual of a prompt replaces its second subject mention (S2) by the IO name (the "S2 -> IO" flip),
which makes the other name the answer while keeping every token position in place. Everything is built from a
fixed, built-in vocabulary of names, places and objects, so generation is deterministic for a seed and the
whole task fits a small word-level vocabulary (:class:`WordVocab`) for models trained from scratch; for GPT-2 /
Pythia checkpoints tokenise :attr:`IOIData.prompts` with the checkpoint's tokenizer instead.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

import numpy as np

__all__ = ["NAMES", "PLACES", "OBJECTS", "TEMPLATES", "IOIData", "ioi_prompts", "TASKS", "task_corpus", "WordVocab"]

# One-word names, places and objects (each is one token in GPT-2's vocabulary when preceded by a space).
NAMES = (
    "Mary", "John", "Alice", "Bob", "Sarah", "James", "Laura", "David", "Emma", "Daniel", "Anna", "Michael",
    "Kate", "Paul", "Lisa", "Mark", "Rachel", "Peter", "Susan", "Tom", "Jessica", "Steven", "Amy", "Kevin",
    "Helen", "Brian", "Linda", "Eric", "Karen", "Jason",
)
PLACES = (
    "store", "garden", "school", "hospital", "restaurant", "station", "office", "park", "house", "beach",
    "library", "market",
)
OBJECTS = (
    "ring", "book", "drink", "bone", "basketball", "computer", "necklace", "kiss", "snack", "letter", "apple",
    "bag",
)

# Templates use [A] [B] for the two introduced names (A first), [S] for the repeated subject, [IO] is the answer
# (never written: the prompt stops right before it), [PLACE], [OBJECT]. BABA/ABBA is decided by which of A, B
# is the subject.
TEMPLATES = (
    "Then, [A] and [B] went to the [PLACE]. [S] gave a [OBJECT] to",
    "When [A] and [B] got a [OBJECT] at the [PLACE], [S] decided to give it to",
    "After [A] and [B] went to the [PLACE], [S] gave a [OBJECT] to",
    "While [A] and [B] were working at the [PLACE], [S] gave a [OBJECT] to",
    "Then, [A] and [B] had a long argument, and afterwards [S] said to",
    "When [A] and [B] arrived at the [PLACE], [S] handed a [OBJECT] to",
    "Friends [A] and [B] found a [OBJECT] at the [PLACE]. [S] gave it to",
    "The [PLACE] [A] and [B] went to had a [OBJECT]. [S] gave it to",
    "Then, [A] and [B] were thinking about going to the [PLACE]. [S] wanted to give a [OBJECT] to",
    "After the lunch, [A] and [B] went to the [PLACE]. [S] brought a [OBJECT] to",
)

ORDERS = ("ABBA", "BABA")


@dataclasses.dataclass(frozen=True)
class IOIData:
    """A batch of IOI prompts and their counterfactuals (all lists have length N).

    Attributes:
      prompts: clean prompts, the sentence without its final word (the answer).
      counterfactuals: the same prompts with the second subject mention replaced by the IO name.
      io: the answer name of each clean prompt (the name the counterfactual repeats).
      s: the subject name of each clean prompt (the answer of the counterfactual).
      order: ``"ABBA"`` (IO introduced first) or ``"BABA"`` (subject introduced first).
      template: index into :data:`TEMPLATES`.
    """

    prompts: list[str]
    counterfactuals: list[str]
    io: list[str]
    s: list[str]
    order: list[str]
    template: list[int]

    def __len__(self) -> int:
        return len(self.prompts)

    def sentences(self, counterfactual: bool = False) -> list[str]:
        """Whole sentences (prompt + answer), e.g. as language-model training text."""
        prompts, answers = (self.counterfactuals, self.s) if counterfactual else (self.prompts, self.io)
        return [f"{p} {a}" for p, a in zip(prompts, answers)]


def _fill(template: str, a: str, b: str, s: str, place: str, obj: str) -> str:
    out = template.replace("[A]", a).replace("[B]", b).replace("[S]", s)
    return out.replace("[PLACE]", place).replace("[OBJECT]", obj)


def ioi_prompts(
    n: int,
    seed: int = 0,
    prompt_type: str = "mixed",
    names: Sequence[str] = NAMES,
    templates: Sequence[str] = TEMPLATES,
) -> IOIData:
    """Generate ``n`` IOI prompts and their S2->IO counterfactuals, deterministically for ``seed``.

    Args:
      n: number of prompts (>= 1).
      seed: numpy seed; the same seed gives the same prompts.
      prompt_type: ``"ABBA"``, ``"BABA"`` or ``"mixed"`` (alternating, half of each, as in Wang et al.).
      names: candidate names (at least two distinct, one word each).
      templates: sentence templates with the placeholders of :data:`TEMPLATES`.
    """
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"ioi_prompts: n must be a positive integer, got {n!r}")
    if prompt_type not in ("ABBA", "BABA", "mixed"):
        raise ValueError(f"ioi_prompts: prompt_type must be 'ABBA', 'BABA' or 'mixed', got {prompt_type!r}")
    names = list(dict.fromkeys(names))
    if len(names) < 2 or any(not re.fullmatch(r"[A-Za-z]+", x) for x in names):
        raise ValueError(f"ioi_prompts: need at least two distinct one-word names, got {names!r}")
    bad = [t for t in templates if not all(k in t for k in ("[A]", "[B]", "[S]"))]
    if not templates or bad:
        raise ValueError(f"ioi_prompts: every template needs [A], [B] and [S] placeholders; these lack some: {bad}")
    rng = np.random.default_rng(seed)
    fields = {k: [] for k in ("prompts", "counterfactuals", "io", "s", "order", "template")}
    for i in range(n):
        order = prompt_type if prompt_type != "mixed" else ORDERS[i % 2]
        t = int(rng.integers(len(templates)))
        io, s = (str(x) for x in rng.choice(names, size=2, replace=False))
        place, obj = str(rng.choice(PLACES)), str(rng.choice(OBJECTS))
        a, b = (io, s) if order == "ABBA" else (s, io)
        fields["prompts"].append(_fill(templates[t], a, b, s, place, obj))
        fields["counterfactuals"].append(_fill(templates[t], a, b, io, place, obj))
        fields["io"].append(io)
        fields["s"].append(s)
        fields["order"].append(order)
        fields["template"].append(t)
    return IOIData(**fields)


NUMBERS = ("one", "two", "three", "four", "five", "six")

# The tasks of :func:`task_corpus` besides IOI; each sentence ends with its answer word.
TASKS = {
    "ioi": "an IOI sentence (:func:`ioi_prompts`), e.g. 'Then, Mary and John went to the park. John gave a ring to Mary'",
    "induction": "a list of 3-5 names repeated: 'Names Mary Tom Kate again Mary Tom Kate'",
    "counting": "1-6 copies of an object and their number: 'Count apple apple apple makes three'",
    "facts": "a fixed (fact_seed) home of each name: 'Mary lives at the park'",
}
_TASK_WORDS = ("Names", "again", "Count", "makes", "lives", "at", "the", *NUMBERS)


def _task_sentence(task: str, rng: np.random.Generator, homes: dict[str, str]) -> str:
    if task == "induction":
        names = " ".join(rng.choice(NAMES, size=int(rng.integers(3, 6)), replace=False))
        return f"Names {names} again {names}"
    if task == "counting":
        k = int(rng.integers(1, len(NUMBERS) + 1))
        return f"Count {' '.join([str(rng.choice(OBJECTS))] * k)} makes {NUMBERS[k - 1]}"
    name = str(rng.choice(NAMES))
    return f"{name} lives at the {homes[name]}"


def task_corpus(n: int, mix: dict[str, float], seed: int = 0, fact_seed: int = 0,
                templates: Sequence[str] = TEMPLATES) -> list[str]:
    """``n`` training sentences drawn from the tasks of :data:`TASKS` with probabilities ``mix`` (normalised), so
    that IOI is one task among several; deterministic for ``(seed, fact_seed)``.

    ``fact_seed`` fixes the "facts" task's home of each name (two corpora with different fact seeds teach
    different facts about the same names); ``templates`` are the IOI sentences' templates. Every sentence ends
    with its answer word.
    """
    unknown = sorted(set(mix) - set(TASKS))
    if unknown or not mix or any(w < 0 for w in mix.values()) or sum(mix.values()) <= 0:
        raise ValueError(f"task_corpus: mix must map tasks of {sorted(TASKS)} to non-negative weights with a "
                         f"positive sum, got {mix!r}")
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"task_corpus: n must be a positive integer, got {n!r}")
    tasks = list(mix)
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(tasks), size=n, p=np.array([mix[t] for t in tasks], float) / sum(mix.values()))
    homes = dict(zip(NAMES, np.random.default_rng(fact_seed).choice(PLACES, size=len(NAMES)).tolist()))
    ioi = iter(ioi_prompts(int((picks == tasks.index("ioi")).sum()) or 1, seed=seed + 1,
                           templates=templates).sentences()) \
        if "ioi" in tasks else iter(())
    return [next(ioi) if tasks[t] == "ioi" else _task_sentence(tasks[t], rng, homes) for t in picks]


_WORD = re.compile(r"[A-Za-z]+|[.,]")


@dataclasses.dataclass(frozen=True)
class WordVocab:
    """Word-level tokenizer for IOI text: words and the punctuation marks ``.`` and ``,`` are tokens.

    Token 0 is padding. Build one from text with :meth:`from_texts` (or :meth:`for_ioi` for the whole built-in
    vocabulary, so every generated prompt is covered).
    """

    words: tuple[str, ...]

    PAD = "<pad>"

    @classmethod
    def from_texts(cls, texts: Sequence[str]) -> WordVocab:
        words = sorted({w for t in texts for w in _WORD.findall(t)})
        return cls((cls.PAD, *words))

    @classmethod
    def for_ioi(cls, templates: Sequence[str] = TEMPLATES) -> WordVocab:
        """Every word any prompt built from the built-in names, places, objects and ``templates`` can contain."""
        stripped = [re.sub(r"\[[A-Z]+\]", " ", t) for t in templates]
        return cls.from_texts([*stripped, *NAMES, *PLACES, *OBJECTS])

    @classmethod
    def for_tasks(cls, templates: Sequence[str] = TEMPLATES) -> WordVocab:
        """:meth:`for_ioi` plus every word of the other tasks of :func:`task_corpus`."""
        return cls.from_texts([*cls.for_ioi(templates).words[1:], *_TASK_WORDS])

    def __len__(self) -> int:
        return len(self.words)

    @property
    def index(self) -> dict[str, int]:
        return {w: i for i, w in enumerate(self.words)}

    def tokenize(self, text: str) -> list[str]:
        return _WORD.findall(text)

    def encode(self, texts: Sequence[str], length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Token ids, right-padded with 0: ``(ids (N, T) int32, lengths (N,) int32)``.

        ``length`` fixes ``T`` (default: the longest text). Raises ``ValueError`` naming words not in the vocabulary.
        """
        index = self.index
        toks = [self.tokenize(t) for t in texts]
        unknown = sorted({w for ts in toks for w in ts if w not in index})
        if unknown:
            raise ValueError(
                f"WordVocab.encode: words not in the vocabulary: {unknown[:10]}; build the vocabulary from these "
                "texts (WordVocab.from_texts) or add the words"
            )
        lengths = np.array([len(ts) for ts in toks], np.int32)
        t_max = int(lengths.max(initial=0)) if length is None else int(length)
        if lengths.size and lengths.max() > t_max:
            raise ValueError(f"WordVocab.encode: a text has {lengths.max()} tokens, more than length={t_max}")
        ids = np.zeros((len(toks), t_max), np.int32)
        for i, ts in enumerate(toks):
            ids[i, : len(ts)] = [index[w] for w in ts]
        return ids, lengths

    def ids(self, words: Sequence[str]) -> np.ndarray:
        """Id of each single word, e.g. the answer names: ``(N,)`` int32."""
        index = self.index
        missing = [w for w in words if w not in index]
        if missing:
            raise ValueError(f"WordVocab.ids: words not in the vocabulary: {missing[:10]}")
        return np.array([index[w] for w in words], np.int32)
