#!/usr/bin/env bash
# Documents each library crate alone, as docs.rs builds it: only that package, with the features
# its `[package.metadata.docs.rs]` names (all-features or a list), warnings denied (docs.rs
# itself builds on nightly with `--cfg docsrs`; stable is what this machine has).
set -euo pipefail
cd "$(dirname "$0")/.."
for crate in kubeedge-core kubeedge-cloud kubeedge-edge kubeedge-device kubeedge-mesh; do
  args=$(python3 - "$crate/Cargo.toml" <<'PY'
import sys, tomllib
meta = tomllib.load(open(sys.argv[1], "rb")).get("package", {}).get("metadata", {}).get("docs", {}).get("rs", {})
out = []
if meta.get("all-features"):
    out.append("--all-features")
if meta.get("features"):
    out += ["--features", ",".join(meta["features"])]
if meta.get("no-default-features"):
    out.append("--no-default-features")
print(" ".join(out))
PY
)
  echo "docs.rs build of $crate: cargo doc -p $crate --no-deps $args"
  # shellcheck disable=SC2086
  RUSTDOCFLAGS="-Dwarnings" cargo doc -p "$crate" --no-deps --locked $args
done
