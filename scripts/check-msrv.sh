#!/usr/bin/env bash
# Checks that the declared `rust-version` (Cargo.toml, [workspace.package]) is at least the
# highest `rust-version` among the locked dependencies (every package of the resolved tree, all
# features: the library's, the model crate's and the example's), so the promise is true.
# Prints the dependency that sets the floor. Needs python3 (standard library only).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo metadata --format-version 1 --locked --all-features | python3 -c '
import json, sys

def version(v):
    return tuple(int(x) for x in v.split("."))

meta = json.load(sys.stdin)
members = set(meta["workspace_members"])
declared = {p["name"]: p.get("rust_version") for p in meta["packages"] if p["id"] in members}
deps = [(version(p["rust_version"]), p["name"], p["version"])
        for p in meta["packages"] if p["id"] not in members and p.get("rust_version")]
need, name, ver = max(deps)
need_s = ".".join(map(str, need))
bad = False
for member, rv in sorted(declared.items()):
    if rv is None or version(rv) < need:
        print(f"check-msrv: {member} declares rust-version {rv}, but {name} {ver} needs {need_s}: "
              f"raise [workspace.package] rust-version in Cargo.toml", file=sys.stderr)
        bad = True
    else:
        print(f"check-msrv: {member} rust-version {rv} >= {need_s} ({name} {ver}, the highest in Cargo.lock)")
sys.exit(1 if bad else 0)
'
