"""CODEC analyses (spec ``papers/codec.md`` §3-6): metrics, causal mode interventions, mode pictures, reports.

Import the submodule you need, e.g. ``from jaxequiv.codec import metrics``; ``report`` imports matplotlib
inside its functions.
"""
