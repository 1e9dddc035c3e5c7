#!/usr/bin/env bash
# An emulated Raspberry Pi (aarch64) Python for the ARM tests: Debian's qemu-user-static runs
# Debian bookworm's arm64 python3.11 with the aarch64 wheels of numpy and tflite-runtime.
# Everything lands in .arm/ (git-ignored); tests/test_arm_emulation.py uses it when present.
# Usage: bash scripts/setup_arm_emulation.sh   (root, Debian/Ubuntu; about a minute)
set -euo pipefail
cd "$(dirname "$0")/.."
ARM=.arm
if [ -x "$ARM/python" ]; then echo "ARM emulation already set up in $ARM"; exit 0; fi
command -v qemu-aarch64-static >/dev/null || {
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user-static >/dev/null; }
rm -rf "$ARM.tmp" && mkdir -p "$ARM.tmp/lists/partial" "$ARM.tmp/debs" "$ARM.tmp/root" "$ARM.tmp/site" "$ARM.tmp/wheels"
apt_arm=(-oAPT::Architecture=arm64 -oAPT::Architectures=arm64 "-oDir::State::Lists=$PWD/$ARM.tmp/lists")
apt-get "${apt_arm[@]}" update -qq
(cd "$ARM.tmp/debs" && apt-get "${apt_arm[@]}" download -qq \
  python3.11-minimal libpython3.11-minimal libpython3.11-stdlib libc6 zlib1g libexpat1 libssl3 \
  libffi8 libbz2-1.0 liblzma5 libgcc-s1 libstdc++6 libsqlite3-0 libuuid1 libtinfo6 libncursesw6 \
  libreadline8 libdb5.3 libcrypt1 libnsl2 libtirpc3 libgssapi-krb5-2 libkrb5-3 libk5crypto3 \
  libcom-err2 libkrb5support0 libkeyutils1 media-types 2>/dev/null)
for deb in "$ARM.tmp"/debs/*.deb; do dpkg -x "$deb" "$ARM.tmp/root"; done
platforms=()
for p in manylinux2014_aarch64 manylinux_2_17_aarch64 manylinux_2_27_aarch64 manylinux_2_28_aarch64 manylinux_2_34_aarch64; do
  platforms+=(--platform "$p")
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.11 --implementation cp \
  "${platforms[@]}" -d "$ARM.tmp/wheels" numpy==1.26.4 tflite-runtime==2.14.0
for wheel in "$ARM.tmp"/wheels/*.whl; do python3 -m zipfile -e "$wheel" "$ARM.tmp/site"; done
rm -rf "$ARM.tmp/debs" "$ARM.tmp/wheels" "$ARM.tmp/lists"
cat > "$ARM.tmp/python" <<SH
#!/bin/sh
# python3.11 for aarch64 under qemu user-mode emulation, with numpy and tflite-runtime
here=\$(cd "\$(dirname "\$0")" && pwd)
# the runner starts its crash-probe children with this wrapper, not the bare aarch64 binary
export EDGECNN_RUNNER_PYTHON="\$here/python"
PYTHONPATH="\$here/site" exec qemu-aarch64-static -L "\$here/root" "\$here/root/usr/bin/python3.11" "\$@"
SH
chmod +x "$ARM.tmp/python"
mv "$ARM.tmp" "$ARM"
"$ARM/python" -c "import platform, numpy, tflite_runtime; print('ARM emulation ready:', platform.machine(), 'numpy', numpy.__version__)"
