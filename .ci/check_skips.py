"""Read a pytest ``-rs`` log: print every skip with its reason; exit 1 if any reason is not "needs CUDA"."""
from __future__ import annotations

import re
import sys

ALLOWED = "needs CUDA"
SKIP = re.compile(r"^SKIPPED \[(\d+)\] (.*?): (.*)$")


def skips(text: str) -> list[tuple[int, str, str]]:
    """``(count, location, reason)`` of each ``SKIPPED [n] file:line: reason`` line of pytest's -rs summary."""
    return [(int(m[1]), m[2], m[3]) for m in map(SKIP.match, text.splitlines()) if m]


def main(path: str) -> int:
    found = skips(open(path, encoding="utf-8", errors="replace").read())
    bad = [s for s in found if ALLOWED not in s[2]]
    for count, where, reason in found:
        print(f"CI: {count} skipped at {where}: {reason}{'' if ALLOWED in reason else '   <- not allowed'}")
    if bad:
        print(f"CI: {sum(c for c, _, _ in bad)} test(s) skipped for a reason other than {ALLOWED!r}: install what "
              f"they need (pip install -e '.[test]') or give them the data", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1]))
