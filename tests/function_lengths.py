#!/usr/bin/env python3
"""The longest functions of the tree outside kernels/ (a text heuristic, not a parser).

A function is a brace block opened on a line whose code, joined with the lines before it back to
the previous ';', '{' or '}', looks like a definition: `name(...)` followed by qualifiers and '{',
not a control statement or a lambda. Its length is the lines from its first signature line to its
closing brace. Usage: function_lengths.py [--most N] [--max L] [DIR ...]; with --max, exits 1 if a
function is longer than L lines, naming it (tests use that to keep train_step and friends short).
Declarative tables (a function that is one initializer list) count like any other.
"""
import re
import sys
from pathlib import Path

CONTROL = re.compile(r"\b(if|for|while|switch|catch|return|else|do)\b\s*(\(|$)")
SIG = re.compile(r"([A-Za-z_~][\w:<>~]*)\s*\(.*\)\s*(const\s*)?(noexcept\s*)?(override\s*)?"
                 r"(->\s*[\w:<>&*\s]+)?\s*(:.*)?\{\s*$", re.S)


def strip(line):
    line = re.sub(r'"(\\.|[^"\\])*"', '""', line)
    line = re.sub(r"'(\\.|[^'\\])*'", "''", line)
    return line.split("//")[0]


def functions(path):
    lines = [strip(l) for l in path.read_text(errors="replace").splitlines()]
    out, i = [], 0
    start_of_stmt = 0
    while i < len(lines):
        code = lines[i].strip()
        if code.endswith("{"):
            head = " ".join(l.strip() for l in lines[start_of_stmt:i + 1])
            m = SIG.search(head)
            if m and not CONTROL.search(head.split("(")[0] + "(") and "[" not in head.split("(")[0] \
                    and not re.search(r"\b(class|struct|namespace|enum|union)\b", head.split("(")[0]):
                depth, j = 0, i
                while j < len(lines):
                    depth += lines[j].count("{") - lines[j].count("}")
                    if depth <= 0:
                        break
                    j += 1
                first = start_of_stmt
                while first < i and not lines[first].strip():
                    first += 1
                out.append((j - first + 1, f"{path}:{first + 1}", m.group(1)))
                start_of_stmt = j + 1
                i = j + 1
                continue
        if code.endswith((";", "{", "}")) or code.startswith("#") or not code:
            start_of_stmt = i + 1
        i += 1
    return out


def main(argv):
    most, limit, dirs = 10, None, []
    it = iter(argv)
    for a in it:
        if a == "--most":
            most = int(next(it))
        elif a == "--max":
            limit = int(next(it))
        else:
            dirs.append(a)
    dirs = dirs or ["trainer", "parallel", "model", "data"]
    found = []
    for d in dirs:
        for p in sorted(Path(d).rglob("*")):
            if p.suffix in (".cpp", ".h", ".cu") and "kernels" not in p.parts:
                found += functions(p)
    found.sort(reverse=True)
    for n, where, name in found[:most]:
        print(f"{n:5d}  {where}  {name}")
    if limit is not None:
        over = [f for f in found if f[0] > limit]
        if over:
            print(f"{len(over)} function(s) longer than {limit} lines")
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
