"""make lint: every link in the README and docs/ resolves inside the
repository (a file that exists, and a heading for each #anchor)."""
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def anchors(path):
    """GitHub's anchors of a Markdown file's headings."""
    out = set()
    for line in open(path, encoding="utf-8"):
        m = re.match(r"#+\s+(.*)", line)
        if m:
            a = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
            out.add(a)
    return out


def check(md):
    bad = []
    text = open(md, encoding="utf-8").read()
    text = re.sub(r"```.*?```", "", text, flags=re.S)  # code blocks hold no links
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            bad.append(f"{target}: points outside the repository")
            continue
        path, _, anchor = target.partition("#")
        dest = os.path.normpath(os.path.join(os.path.dirname(md), path)) if path else md
        if not os.path.exists(dest):
            bad.append(f"{target}: no such file")
        elif anchor and dest.endswith(".md") and anchor not in anchors(dest):
            bad.append(f"{target}: no heading #{anchor}")
    return [f"{os.path.relpath(md, ROOT)}: {b}" for b in bad]


def main():
    files = [os.path.join(ROOT, "README.md")]
    files += sorted(os.path.join(ROOT, "docs", f) for f in os.listdir(os.path.join(ROOT, "docs")) if f.endswith(".md"))
    bad = [b for f in files for b in check(f)]
    print("\n".join(bad) or f"links: {len(files)} files, every link resolves")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
