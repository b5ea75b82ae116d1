"""RSS high-water mark of this process, resettable (Linux), for "extra peak memory" figures."""

from __future__ import annotations


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def rss_bytes() -> int:
    return _status_kb("VmRSS") * 1024


def peak_bytes() -> int:
    return _status_kb("VmHWM") * 1024


def reset_peak() -> int:
    """Reset the high-water mark to the current RSS; return that RSS."""
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")
    return rss_bytes()
