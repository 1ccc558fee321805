"""IOI across transformers: circuit discovery by head patching, GetImpl, congruity (paper §3.2, Fig. 2 centre)."""
