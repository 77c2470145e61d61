#!/usr/bin/env bash
# The project's test command (README): fetches the test assets, then runs every test
# (unit, integration, property, end-to-end and doc tests) on the CPU.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
cargo test --release --locked "$@"
