#!/usr/bin/env bash
# The whole test suite, on a fresh Debian/Ubuntu machine: installs prerequisites, then checks
# formatting and lints, then runs unit tests (in-memory store) and integration tests (real
# FUSE mounts against a Garage server the harness starts on 127.0.0.1).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/install-deps.sh
cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
cargo test --all-targets
