#!/usr/bin/env bash
# Install Triton's perf_analyzer 2.60.0 into a private folder, with the C and C++ runtime it needs.
#
# The PyPI wheel is tagged manylinux_2_38 (glibc 2.38, GLIBCXX_3.4.32); Debian 12 has glibc 2.36, so a plain
# `pip install perf-analyzer` silently yields a 0.1.0 placeholder. Instead: download the real wheel for that
# platform, download the runtime libraries of Debian 13 (same mirror as this machine's apt sources, suite
# trixie) into a private apt state, unpack both into DEST, and start the binary through DEST's own dynamic
# loader. Nothing outside DEST is changed. Usage: install_perf_analyzer.sh DEST [PYTHON]
set -euo pipefail

DEST=$(mkdir -p "${1:?usage: $0 DEST [PYTHON]}" && cd "$1" && pwd)
PYTHON=${2:-python3}
VERSION=2.60.0
RUNNER="$DEST/perf_analyzer"

if [ -x "$RUNNER" ] && "$RUNNER" --version >/dev/null 2>&1; then
  echo "perf_analyzer already installed: $RUNNER"
  exit 0
fi

# 1. The binary, from the wheel.
mkdir -p "$DEST/wheel"
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --platform manylinux_2_38_x86_64 \
  -d "$DEST/wheel" "perf-analyzer==$VERSION"
"$PYTHON" - "$DEST" <<'PY'
import glob, os, sys, zipfile
dest = sys.argv[1]
wheel = glob.glob(os.path.join(dest, "wheel", "perf_analyzer-*.whl"))[0]
with zipfile.ZipFile(wheel) as z:
    data = z.read("perf_analyzer/bin/perf_analyzer")
path = os.path.join(dest, "perf_analyzer.bin")
with open(path, "wb") as f:
    f.write(data)
os.chmod(path, 0o755)
PY

# 2. Debian 13's runtime libraries, through a private apt state (the machine's apt is untouched).
mirror=$(cat /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null \
  | grep -E '^(URIs:|deb )' | grep -v security | head -n 1 | awk '{print $2}' || true)
[ -n "$mirror" ] || { echo "cannot find a Debian mirror in this machine's apt sources" >&2; exit 1; }
apt_dir="$DEST/apt"
mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$DEST/debs" "$DEST/root"
echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror trixie main" > "$apt_dir/sources.list"
apt_opts=(-o "Dir::Etc::SourceList=$apt_dir/sources.list" -o "Dir::Etc::SourceParts=/dev/null"
  -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache" -o "APT::Sandbox::User=root")
apt-get "${apt_opts[@]}" update -qq
(cd "$DEST/debs" && apt-get "${apt_opts[@]}" download libc6 libstdc++6 libgcc-s1 libssl3t64 zlib1g)
for deb in "$DEST"/debs/*.deb; do dpkg-deb -x "$deb" "$DEST/root"; done

# 3. A launcher that runs the binary under Debian 13's loader and libraries.
cat > "$RUNNER" <<SH
#!/bin/sh
root="$DEST/root"
exec "\$root/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2" \\
  --library-path "\$root/usr/lib/x86_64-linux-gnu:\$root/lib/x86_64-linux-gnu" \\
  "$DEST/perf_analyzer.bin" "\$@"
SH
chmod +x "$RUNNER"
"$RUNNER" --version
echo "perf_analyzer installed: $RUNNER"
