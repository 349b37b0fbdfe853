#!/usr/bin/env python3
"""Structure targets of src/ (ADR 13): functions over 60 lines, production files over 500 lines
(the lines before a file's `#[cfg(test)] mod tests`), two top-level modules importing each other,
and import cycles between the files of src/
(through `crate::`, `super::`, `self::` and child-module paths; `pub use` re-exports are followed,
not counted). A file whose header explains why it is longer (a `//!` line containing "lines")
is listed apart. Reads rustfmt-formatted code: a function ends at the first `}` at its own indent.

Usage: scripts/check-structure.sh [SRC_DIR]   (exit status 1 when a target is missed)
"""
import os
import re
import sys

FN_LIMIT, FILE_LIMIT = 60, 500
FN_RE = re.compile(r"^(\s*)(pub(\([^)]*\))?\s+)?(const\s+)?(async\s+)?(unsafe\s+)?fn\s+(\w+)")


def module_of(src, path):
    rel = os.path.relpath(path, src)[:-3].split(os.sep)
    if rel[-1] in ("mod", "lib"):
        rel = rel[:-1]
    return tuple(rel)


def long_functions(lines):
    out = []
    for i, line in enumerate(lines):
        m = FN_RE.match(line)
        if not m:
            continue
        indent = m.group(1)
        for j in range(i, len(lines)):
            if lines[j].rstrip().endswith(";") and "{" not in "".join(lines[i : j + 1]):
                break  # a declaration without a body
            if j > i and lines[j].rstrip() == indent + "}":
                if j - i + 1 > FN_LIMIT:
                    out.append((m.group(7), i + 1, j - i + 1))
                break
    return out


def production_lines(lines):
    for i, line in enumerate(lines):
        if line.strip() == "#[cfg(test)]" and i + 1 < len(lines) and re.match(r"(pub(\([^)]*\))? )?mod tests", lines[i + 1].strip()):
            return i
    return len(lines)


def expand_use(tree):
    """`a::{b, c::{d, e}}` -> [a::b, a::c::d, a::c::e]."""
    tree = re.sub(r"\s+", "", tree)
    brace = tree.find("{")
    if brace < 0:
        return [re.sub(r"as\w+$", "", tree.split(" as ")[0])]
    prefix, body = tree[:brace], tree[brace + 1 : tree.rfind("}")]
    parts, depth, cur = [], 0, ""
    for ch in body:
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
            continue
        depth += ch == "{"
        depth -= ch == "}"
        cur += ch
    parts.append(cur)
    return [p for part in parts if part for p in expand_use(prefix + part)]


def main():
    src = sys.argv[1] if len(sys.argv) > 1 else "src"
    files = {}
    for root, _, names in os.walk(src):
        for n in names:
            if n.endswith(".rs") and n != "main.rs":
                p = os.path.join(root, n)
                files[module_of(src, p)] = p
    texts = {m: open(p, encoding="utf-8").read() for m, p in files.items()}
    # The binary's root is checked for length too, not for imports (it reaches the library by name).
    every = sorted(list(files.values()) + [p for p in [os.path.join(src, "main.rs")] if os.path.exists(p)])
    failed = False

    print(f"functions over {FN_LIMIT} lines:")
    for p in every:
        for name, line, n in long_functions(open(p, encoding="utf-8").read().splitlines()):
            print(f"  {p}:{line} {name} ({n} lines)")
            failed = True

    print(f"production files over {FILE_LIMIT} lines:")
    for p in every:
        lines = open(p, encoding="utf-8").read().splitlines()
        n = production_lines(lines)
        if n > FILE_LIMIT:
            header = [l for l in lines if l.startswith("//!")]
            why = any("lines" in l for l in header)
            print(f"  {p} ({n} lines){' - its header says why' if why else ''}")
            failed |= not why

    # Re-exports (`pub use x::Y;`) per module: name -> absolute path.
    def absolute(mod, path):
        segs = path.split("::")
        if segs[0] == "crate":
            return tuple(segs[1:])
        base = list(mod)
        while segs and segs[0] in ("super", "self"):
            if segs.pop(0) == "super":
                base.pop()
        if segs and (tuple(base + [segs[0]]) in files or segs[0] in children.get(mod, ())):
            return tuple(base + segs)
        return tuple(base + segs) if path.startswith(("super", "self")) else None

    children = {m: set(re.findall(r"^\s*(?:pub(?:\([^)]*\))?\s+)?mod (\w+);", t, re.M)) for m, t in texts.items()}
    reexports = {}
    for m, t in texts.items():
        for tree in re.findall(r"^\s*pub(?:\([^)]*\))? use ([^;]+);", t, re.M):
            for path in expand_use(tree):
                a = absolute(m, path)
                if a:
                    reexports.setdefault(m, {})[a[-1]] = a

    def file_of(path, seen=0):
        for k in range(len(path), 0, -1):
            mod = path[:k]
            if mod in files:
                rest = path[k:]
                if rest and seen < 8 and rest[0] in reexports.get(mod, {}):
                    return file_of(reexports[mod][rest[0]], seen + 1)
                return mod
        return () if () in files else None

    edges = {m: set() for m in files}
    for m, t in texts.items():
        code = t[: sum(len(l) + 1 for l in t.splitlines()[: production_lines(t.splitlines())])]
        code = re.sub(r"^\s*pub(?:\([^)]*\))? use [^;]+;", "", code, flags=re.M)
        code = re.sub(r"//[^\n]*", "", code)
        paths = []
        for tree in re.findall(r"^\s*use ([^;]+);", code, re.M):
            paths += expand_use(tree)
        paths += re.findall(r"\b(?:crate|super|self)(?:::\w+)+", code)
        for child in children.get(m, ()):
            paths += ["self::" + p for p in re.findall(r"(?<![\w:])%s(?:::\w+)+" % child, code)]
        for path in paths:
            a = absolute(m, path)
            target = file_of(a) if a else None
            if target is not None and target != m and target in files:
                edges[m].add(target)

    print("import cycles between files:")
    index, low, stack, on, sccs, counter = {}, {}, [], set(), [], [0]

    def strong(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                sccs.append(comp)

    sys.setrecursionlimit(10000)
    for v in sorted(files):
        if v not in index:
            strong(v)
    for comp in sccs:
        print("  " + " <-> ".join(sorted(files[c] for c in comp)))
        failed = True
    # The same edges between top-level modules (`crate::x`): a lower module never imports a higher one.
    print("top-level modules that import each other:")
    top = {}
    for m, targets in edges.items():
        for t in targets:
            if m and t and m[0] != t[0]:
                top.setdefault(m[0], set()).add(t[0])
    for a in sorted(top):
        for b in sorted(top[a]):
            if a < b and a in top.get(b, ()):
                print(f"  {a} <-> {b}")
                failed = True
    print("structure: " + ("targets missed" if failed else "ok"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
