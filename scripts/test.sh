#!/usr/bin/env bash
# The whole test suite: every unit, doc and multi-process test, then the process tests again in
# a release build. A child finds its function by offset from an anchor in the executable, and
# release builds lay code out differently (inlining, one copy of a small function per codegen
# unit), so a spawn that works in debug can still break there; the bench and users run release.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo is required (install a Rust toolchain with rustup)" >&2
    exit 1
fi
echo "Note: some tests make child processes panic on purpose, to check that a panic comes back"
echo "as data. Their messages on stderr, each after a line 'multiproc: child process N panicked;"
echo "its parent receives this panic ...', are expected."
cargo test --workspace
cargo test --release --test process_spawn --test process_pool --test process_fork_server \
    --test process_exit --test process_bootstrap --test process_family --test process_identity \
    --test process_tree --test process_stdio --test process_limits
