#!/bin/sh
# Installs what the aarch64 build of pe_infer needs, if any is missing: Debian's cross toolchain
# (aarch64-linux-gnu-g++), the arm64 builds of libpng, libjpeg, zlib and libstdc++ beside the
# native ones (Debian multiarch: this adds the arm64 architecture to dpkg), and qemu-user, which
# runs the cross-built pe_infer here (`qemu-aarch64 pe_infer ...`: the arm64 C library and loader
# are in /lib/aarch64-linux-gnu; no binfmt needed). Debian/Ubuntu (apt-get) only;
# elsewhere, without root, or when apt cannot get them, it says so and the aarch64 test skips.
# Run by `make cross-deps`, hence by `make test`.
set -eu
. "$(dirname "$0")/apt-lib.sh"

# libstdc++6:arm64 so that one C library serves pe_infer under qemu: `-L /usr/aarch64-linux-gnu`
# (the cross toolchain's copy, another build) loaded its ld.so beside the multiarch libc, and
# the first pthread_create looped for ever.
packages="g++-aarch64-linux-gnu qemu-user libpng-dev:arm64 libjpeg-dev:arm64 zlib1g-dev:arm64
          libstdc++6:arm64"

if ! command -v dpkg-query >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1; then
    echo "cross-deps: not a Debian/Ubuntu system; for the aarch64 test install an" \
         "aarch64-linux-gnu g++, qemu-user and arm64 libpng/libjpeg/zlib/libstdc++ (it skips" \
         "without)" >&2
    exit 0
fi

# shellcheck disable=SC2086
missing=$(missing_packages $packages)
if [ -z "$missing" ]; then
    exit 0
fi

if ! root_runner; then
    echo "cross-deps: missing packages:$missing; install them with" \
         "'sudo dpkg --add-architecture arm64 && sudo apt-get update &&" \
         "sudo apt-get install$missing' (the aarch64 test skips without them)" >&2
    exit 0
fi

added_arm64=""
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    $run dpkg --add-architecture arm64
    added_arm64=yes
fi
echo "cross-deps: installing$missing" >&2
export DEBIAN_FRONTEND=noninteractive
# shellcheck disable=SC2086
if $run apt-get update -qq && $run apt-get install -y -qq --no-install-recommends $missing; then
    exit 0
fi
# No arm64 packages on this mirror (Ubuntu's main archive has none): leave apt as it was.
echo "cross-deps: could not install$missing; the aarch64 test will skip" >&2
if [ -n "$added_arm64" ]; then
    $run dpkg --remove-architecture arm64 && $run apt-get update -qq || true
fi
exit 0
