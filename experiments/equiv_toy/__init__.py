"""n-permutation detection: interpretive equivalence of RASP algorithm families (paper §3.1, Fig. 2 left)."""
