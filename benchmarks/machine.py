"""What a benchmark ran on: CPU model, usable cores, thread counts and load average (printed by every benchmark
that imports it, because timings move with the machine and its load)."""

from __future__ import annotations

import os
import platform

__all__ = ["cpu_model", "loadavg", "describe"]


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def loadavg() -> str:
    """The 1, 5 and 15 minute load averages."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def describe() -> str:
    """One line: CPU model, logical / usable CPUs, torch threads (if torch is imported) and the load average."""
    import sys

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    torch = sys.modules.get("torch")
    threads = f"; torch threads {torch.get_num_threads()}" if torch is not None else ""
    return f"CPU: {cpu_model()}; {os.cpu_count()} logical CPUs, {usable} usable{threads}; load average {loadavg()}"
