#!/usr/bin/env bash
# bubblewrap for the GPU machine, which has no bwrap and no package registry (grader/jail.py needs it).
#
#   bash benchmarks/gpu/bwrap_deb.sh download         # here (with apt and network), in /work/main:
#                                                      # Debian's .debs into .debs/ (git-ignored), then
#                                                      # prints the line a GPU command must start with
#   bash benchmarks/gpu/bwrap_deb.sh install PREFIX    # there: unpack into PREFIX, print the bwrap to use
#
# The GPU run carries .debs/ (run's carry: [".debs"]) and starts with the printed one-liner, which
# exports EFFILAB_BWRAP. Only the libraries the machine lacks (bwrap needs libcap2, libselinux1,
# libpcre2-8-0 and glibc >= 2.34) are taken from the .debs, through a wrapper that sets
# LD_LIBRARY_PATH for bwrap alone (the jailed program gets a clean environment).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
debs="$root/.debs"
pkgs=(bubblewrap libcap2 libselinux1 libpcre2-8-0)

download() {
  command -v apt-get >/dev/null || { echo "error: apt-get not found: run this on a Debian/Ubuntu machine" >&2; exit 1; }
  rm -rf "$debs" && mkdir -p "$debs"
  (cd "$debs" && apt-get download "${pkgs[@]}" >/dev/null)
  ls "$debs"/bubblewrap_*.deb >/dev/null || { echo "error: no bubblewrap .deb was downloaded" >&2; exit 1; }
  echo "downloaded into $debs:"; ls -1 "$debs"
  echo "carry .debs to the GPU machine and start the command with:"
  echo "  bash benchmarks/gpu/bwrap_deb.sh install /tmp/effilab-bwrap && export EFFILAB_BWRAP=/tmp/effilab-bwrap/bwrap || exit;"
}

unpack() {  # unpack .deb $1 into folder $2: dpkg-deb where there is one, else Python (ar + tar)
  if command -v dpkg-deb >/dev/null; then dpkg-deb -x "$1" "$2"; return; fi
  python3 - "$1" "$2" <<'PY'
import io, sys, tarfile
data = open(sys.argv[1], "rb").read()
assert data[:8] == b"!<arch>\n", "not a .deb"
pos = 8
while pos < len(data):
    name, size = data[pos:pos + 16].decode().strip().rstrip("/"), int(data[pos + 48:pos + 58].decode())
    body = data[pos + 60:pos + 60 + size]
    if name.startswith("data.tar"):
        if name.endswith(".zst"):
            sys.exit("error: zstd-compressed .deb and no dpkg-deb to unpack it")
        tarfile.open(fileobj=io.BytesIO(body)).extractall(sys.argv[2])
    pos += 60 + size + (size % 2)
PY
}

install() {
  prefix=${1:?usage: bwrap_deb.sh install PREFIX}
  ls "$debs"/bubblewrap_*.deb >/dev/null 2>&1 || { echo "error: no $debs/bubblewrap_*.deb: run 'bwrap_deb.sh download' where apt works, and carry .debs" >&2; exit 1; }
  rm -rf "$prefix" && mkdir -p "$prefix/lib" "$prefix/root"
  unpack "$debs"/bubblewrap_*.deb "$prefix/root"
  for pair in libcap2:libcap.so.2 libselinux1:libselinux.so.1 libpcre2-8-0:libpcre2-8.so.0; do
    pkg=${pair%%:*} so=${pair#*:}
    if ! ldconfig -p 2>/dev/null | grep -q "[[:space:]]$so "; then  # missing here: take Debian's
      unpack "$debs/${pkg}"_*.deb "$prefix/root"
      cp -a "$prefix"/root/{usr/,}lib/x86_64-linux-gnu/"$so"* "$prefix/lib/" 2>/dev/null || true
    fi
  done
  printf '#!/bin/sh\nLD_LIBRARY_PATH=%s/lib exec %s/root/usr/bin/bwrap "$@"\n' "$prefix" "$prefix" > "$prefix/bwrap"
  chmod 755 "$prefix/bwrap"
  "$prefix/bwrap" --version >/dev/null || { echo "error: the unpacked bwrap does not run here (ldd says:)" >&2;
    LD_LIBRARY_PATH="$prefix/lib" ldd "$prefix/root/usr/bin/bwrap" >&2 || true; exit 1; }
  echo "bwrap ready: EFFILAB_BWRAP=$prefix/bwrap ($("$prefix/bwrap" --version))"
}

case "${1:-}" in
  download) download ;;
  install) install "${2:-}" ;;
  *) echo "usage: $0 download | install PREFIX" >&2; exit 2 ;;
esac
