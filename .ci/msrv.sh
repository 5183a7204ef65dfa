#!/usr/bin/env bash
# The minimum supported Rust version (`rust-version` in Cargo.toml) builds the workspace. When the
# toolchain CI builds with is that version, every other step already shows it and nothing more is
# built; otherwise the workspace is checked with that toolchain, or CI fails saying it is missing
# (the declared version must be one CI can check).
set -euo pipefail
cd "$(dirname "$0")/.."
msrv=$(sed -n 's/^rust-version = "\(.*\)"/\1/p' Cargo.toml)
current=$(rustc --version | awk '{print $2}')
if [[ "$current" == "$msrv" || "$current" == "$msrv".* ]]; then
  echo "rustc $current is the declared MSRV $msrv: this run checks it"
  exit 0
fi
toolchain=$(rustup toolchain list | awk -v v="$msrv" '$1 ~ "^"v"(\\.[0-9]+)?-" {print $1; exit}')
if [[ -z "$toolchain" ]]; then
  echo "MSRV $msrv: no such toolchain here (rustup toolchain list), and rustc is $current" >&2
  exit 1
fi
echo "checking the workspace with $toolchain (MSRV $msrv)"
cargo "+$toolchain" check --workspace --all-targets --locked
