#!/usr/bin/env python3
"""Regenerates patch_strategies.txt: the strategic-merge-patch metadata of Kubernetes' built-in
kinds (the `+patchStrategy=` and `+patchMergeKey=` markers of each field), read from the same
upstream generated.proto files as kubernetes.fds (see kubernetes.fds.sh).

usage: python3 patch_strategies.py [k8s-rs-pb source dir] [minor, e.g. v1_33]
One line per marked field: `<proto message>.<field> <strategy> <merge key or ->`."""
import glob, os, re, sys

here = os.path.dirname(os.path.abspath(__file__))
if len(sys.argv) > 1:
    src = sys.argv[1]
else:
    registry = sorted(glob.glob(os.path.expanduser("~/.cargo/registry/src/*/")))[0]
    src = sorted(glob.glob(registry + "k8s-rs-pb-*"))[-1]
minor = sys.argv[2] if len(sys.argv) > 2 else "v1_33"
root = os.path.join(src, "src", minor)
out = []
for path in sorted(glob.glob(os.path.join(root, "**", "generated.proto"), recursive=True)):
    if "testapigroup" in path:
        continue
    package, scopes, strategy, key = "", [], None, None
    for line in open(path):
        s = line.strip()
        if s.startswith("package "):
            package = s[len("package "):].rstrip(";")
        elif s.startswith("//"):
            m = re.match(r"//\s*\+patchStrategy=(\S+)", s)
            if m:
                strategy = m.group(1)
            m = re.match(r"//\s*\+patchMergeKey=(\S+)", s)
            if m:
                key = m.group(1)
        elif s.startswith("message "):
            scopes.append(s.split()[1])
            strategy = key = None
        elif s == "}":
            if scopes:
                scopes.pop()
            strategy = key = None
        elif s and scopes:
            m = re.match(r"(?:repeated\s+|optional\s+)?(?:map<[^>]+>|[\w.]+)\s+(\w+)\s*=", s)
            if m and (strategy or key):
                out.append(f"{package}.{'.'.join(scopes)}.{m.group(1)} {strategy or '-'} {key or '-'}")
            strategy = key = None
        elif not s:
            strategy = key = None
with open(os.path.join(here, "patch_strategies.txt"), "w") as f:
    f.write("\n".join(out) + "\n")
print(f"wrote {len(out)} fields from {root}")
