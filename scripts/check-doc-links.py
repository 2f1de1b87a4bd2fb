#!/usr/bin/env python3
"""Checks the relative links of the Markdown documentation: every `](file)` names a file that
exists, and every `](#anchor)` or `](file.md#anchor)` names a heading of that file (anchors as
GitHub makes them). Prints each broken link and exits 1 when there is one.

Usage: scripts/check-doc-links.py [FILE.md ...]   (default: README.md, docs/*.md and the other
top-level Markdown files)
"""
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINK = re.compile(r"\]\(([^)\s]+)\)")
FENCE = re.compile(r"^\s*(```|~~~)")


def lines_outside_code(text):
    """The lines of `text` that are not inside fenced code blocks."""
    inside = False
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            inside = not inside
            continue
        if not inside:
            yield number, line


def slug(heading):
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path):
    """Every anchor a file's headings make, with -1, -2 ... for repeated headings."""
    seen = {}
    found = set()
    for _, line in lines_outside_code(path.read_text(encoding="utf-8")):
        m = re.match(r"^(#{1,6})\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        base = slug(m.group(2))
        n = seen.get(base, 0)
        found.add(base if n == 0 else f"{base}-{n}")
        seen[base] = n + 1
    return found


def main(argv):
    files = [Path(a).resolve() for a in argv] or sorted(
        [*ROOT.glob("*.md"), *ROOT.glob("docs/*.md"), *ROOT.glob("benches/*.md")]
    )
    cache = {}
    broken = 0
    checked = 0
    for f in files:
        for number, line in lines_outside_code(f.read_text(encoding="utf-8")):
            # Inline code spans are not links.
            line = re.sub(r"`[^`]*`", "", line)
            for target in LINK.findall(line):
                if re.match(r"^[a-z][a-z0-9+.-]*:", target):
                    continue  # http:, https:, mailto: ...
                checked += 1
                path_part, _, anchor = target.partition("#")
                dest = (f.parent / path_part).resolve() if path_part else f
                shown = f.relative_to(ROOT) if f.is_relative_to(ROOT) else f
                where = f"{shown}:{number}: {target}"
                if not dest.exists():
                    print(f"{where}: no such file", file=sys.stderr)
                    broken += 1
                    continue
                if anchor:
                    if dest.suffix != ".md":
                        print(f"{where}: anchor into a file that is not Markdown", file=sys.stderr)
                        broken += 1
                        continue
                    if dest not in cache:
                        cache[dest] = anchors(dest)
                    if anchor not in cache[dest]:
                        print(f"{where}: no heading makes #{anchor}", file=sys.stderr)
                        broken += 1
    print(f"{checked} relative links checked in {len(files)} files, {broken} broken")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
