#!/usr/bin/env bash
# The project's test command (README): fetches the test assets, then runs every test on the CPU:
# the workspace's (library, model crate: unit, integration, property and doc tests), then the
# arena_judge example's own tests (`cargo test` builds examples but runs their tests only when
# asked).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
cargo test --workspace --release --locked "$@"
cargo test --release --locked --example arena_judge "$@"
