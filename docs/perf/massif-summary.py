#!/usr/bin/env python3
"""Summarises the peak snapshot of a massif file: heap bytes by the node or protocol function
that caused them (the first kervan frame from the allocation outward) and the library that
allocated (automerge, sled, serde_json, std collections).

    python3 docs/perf/massif-summary.py target/kervan-bench/memory-10k.massif
"""
import re
import sys
from collections import defaultdict

LIBS = [("automerge::", "automerge"), ("sled::", "sled"), ("serde_json::", "serde_json"),
        ("hashbrown::", "HashMap/HashSet"), ("btree", "BTreeMap/BTreeSet"),
        ("alloc::vec", "Vec"), ("alloc::string", "String")]


OWNER = re.compile(r"^<?kervan_(node|protocol|bench)::")


def function(desc):
    """The function of a frame: between the address and the file."""
    f = desc.split(": ", 1)[-1]
    return re.sub(r" \([^()]*\)$", "", f).strip()


def main(path):
    lines = open(path).read().splitlines()
    # Find the peak snapshot.
    peak = None
    for i, l in enumerate(lines):
        if l.startswith("heap_tree=peak"):
            peak = i
    if peak is None:
        sys.exit("no peak snapshot")
    total = 0
    for l in lines[peak - 5:peak]:
        if l.startswith("mem_heap_B="):
            total = int(l.split("=")[1])
    # Parse the tree: "  n2: 1234 0xADDR: desc"
    node = re.compile(r"^( *)n(\d+): (\d+) (.*)$")
    stack = []  # (depth, desc, bytes, children_bytes)
    out = defaultdict(int)

    def close(entry, path):
        depth, desc, nbytes, child = entry
        own = nbytes - child
        if own <= 0:
            return
        owner = next((f for f in map(function, path) if OWNER.match(f)), "(no kervan frame)")
        lib = next((name for key, name in LIBS if any(key in function(d) for d in path)), "other")
        out[(owner[:90], lib)] += own

    path = []
    for l in lines[peak + 1:]:
        m = node.match(l)
        if not m:
            break
        depth = len(m.group(1))
        nbytes = int(m.group(3))
        desc = m.group(4)
        while stack and stack[-1][0] >= depth:
            e = stack.pop()
            close(e, path)
            path.pop()
        if stack:
            d, ds, b, c = stack[-1]
            stack[-1] = (d, ds, b, c + nbytes)
        stack.append((depth, desc, nbytes, 0))
        path.append(desc)
    while stack:
        e = stack.pop()
        close(e, path)
        path.pop()
    print(f"peak heap {total / 1e6:.1f} MB")
    for (owner, lib), b in sorted(out.items(), key=lambda kv: -kv[1])[:20]:
        print(f"{b / 1e6:8.1f} MB  {b * 100 / max(total, 1):5.1f}%  {lib:<16} {owner}")


main(sys.argv[1])
