"""RASP subroutines and the interpretations of n-permutation detection chained from them.

The task: is a sequence of ``n`` tokens from ``{0, ..., n-1}`` a permutation of ``0..n-1``? Every subroutine
maps a sequence over ``{0, ..., n}`` to a sequence over ``{0, ..., n}`` (so any chain composes, as InterpBench's
modules do by feeding one module's argmax tokens to the next), and every interpretation below decides the task
exactly, by a different algorithm. Two families:

* sorting: sort the tokens, then check the sorted sequence against the positions;
* counting: count tokens (equal ones, or ones below each position) and check the counts.
"""

from __future__ import annotations

import functools

__all__ = ["SUBROUTINES", "INTERPRETATIONS", "FAMILIES", "subroutine", "evaluate_chain"]


def _builders(n: int):
    from tracr.compiler import lib
    from tracr.rasp import rasp

    tok, idx = rasp.tokens, rasp.indices
    m = n + 1  # modulus of the index arithmetic: keeps values in {0..n}

    def flag_all(pred, name):
        # 1 at every position iff pred holds at every position: count the positions where it fails.
        fails = rasp.SelectorWidth(rasp.Select(tok, tok, lambda k, q: not pred(k))).named(f"{name}_fails")
        return rasp.Map(lambda c: int(c == 0), fails).named(name)

    def all_equal():
        first = rasp.Aggregate(rasp.Select(idx, idx, lambda k, q: k == 0), tok).named("first")
        differ = rasp.SelectorWidth(rasp.Select(tok, first, rasp.Comparison.NEQ)).named("n_differ")
        return rasp.Map(lambda c: int(c == 0), differ).named("all_equal")

    return {
        "sort": lambda: lib.make_sort(tok, tok, max_seq_len=n, min_key=1).named("sort"),
        "sort_desc": lambda: lib.make_sort(tok, rasp.Map(lambda x: n - x, tok).named("neg"), max_seq_len=n,
                                           min_key=1).named("sort_desc"),
        "hist": lambda: rasp.SelectorWidth(rasp.Select(tok, tok, rasp.Comparison.EQ)).named("hist"),
        "count_smaller": lambda: rasp.SelectorWidth(rasp.Select(tok, tok, rasp.Comparison.LT)).named("count_smaller"),
        "count_below_index": lambda: rasp.SelectorWidth(rasp.Select(tok, idx, rasp.Comparison.LT)).named(
            "count_below_index"),
        "eq_index": lambda: rasp.SequenceMap(lambda x, i: int(x == i), tok, idx).named("eq_index"),
        "add_index": lambda: rasp.SequenceMap(lambda x, i: (x + i) % m, tok, idx).named("add_index"),
        "sub_index": lambda: rasp.SequenceMap(lambda x, i: (x - i) % m, tok, idx).named("sub_index"),
        "all_ones": lambda: flag_all(lambda x: x == 1, "all_ones"),
        "all_equal": all_equal,
    }


SUBROUTINES = (
    "sort", "sort_desc", "hist", "count_smaller", "count_below_index", "eq_index", "add_index", "sub_index",
    "all_ones", "all_equal",
)

# name -> chain of subroutines; each decides "is a permutation of 0..n-1" exactly.
INTERPRETATIONS = {
    "A1 sort>eq_index>all_ones": ("sort", "eq_index", "all_ones"),
    "A2 sort_desc>add_index>all_equal": ("sort_desc", "add_index", "all_equal"),
    "A3 sort>sub_index>all_equal": ("sort", "sub_index", "all_equal"),
    "A4 hist>all_ones": ("hist", "all_ones"),
    "A5 count_smaller>hist>all_ones": ("count_smaller", "hist", "all_ones"),
    "A6 count_below_index>eq_index>all_ones": ("count_below_index", "eq_index", "all_ones"),
}
FAMILIES = {name: ("sorting" if chain[0].startswith("sort") else "counting") for name, chain in INTERPRETATIONS.items()}


@functools.lru_cache(maxsize=None)
def subroutine(name: str, n: int):
    """The RASP program of subroutine ``name`` for length-``n`` inputs (one object per process, so tracr's compile
    cache hits)."""
    builders = _builders(n)
    if name not in builders:
        raise ValueError(f"unknown subroutine {name!r}; known: {sorted(builders)}")
    return builders[name]()


def evaluate_chain(chain, sequences, n: int) -> list[list[list[int]]]:
    """RASP evaluation of every module of ``chain`` on ``sequences``: ``[module][example][position]`` outputs."""
    outs, xs = [], [list(s) for s in sequences]
    for name in chain:
        program = subroutine(name, n)
        xs = [[int(v) for v in program(x)] for x in xs]
        outs.append(xs)
    return outs
