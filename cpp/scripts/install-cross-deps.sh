#!/bin/sh
# Installs what the aarch64 build needs, if any is missing: Debian's cross toolchain
# (aarch64-linux-gnu-g++, its C library under /usr/aarch64-linux-gnu) and qemu-user, which
# runs the cross-built pe_infer here (`qemu-aarch64 -L /usr/aarch64-linux-gnu`, no binfmt).
# Debian/Ubuntu (apt-get) only; elsewhere, or without root, it says what to install and the
# aarch64 test skips. Run by `make cross-deps`, hence by `make test`.
set -eu

packages="g++-aarch64-linux-gnu qemu-user"

if ! command -v dpkg-query >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1; then
    echo "cross-deps: not a Debian/Ubuntu system; install an aarch64-linux-gnu g++ cross" \
         "compiler and qemu-user for the aarch64 test (it skips without them)" >&2
    exit 0
fi

missing=""
for package in $packages; do
    status=$(dpkg-query -W -f='${Status}' "$package" 2>/dev/null || true)
    case "$status" in
        *"install ok installed"*) ;;
        *) missing="$missing $package" ;;
    esac
done
if [ -z "$missing" ]; then
    exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
    run=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    run="sudo -n"
else
    echo "cross-deps: missing packages:$missing; install them with" \
         "'sudo apt-get install$missing' (the aarch64 test skips without them)" >&2
    exit 0
fi
echo "cross-deps: installing$missing" >&2
export DEBIAN_FRONTEND=noninteractive
# A failed install (no network, a mirror without them) leaves the aarch64 test to skip.
if ! { $run apt-get update -qq &&
       $run apt-get install -y -qq --no-install-recommends $missing; }; then
    echo "cross-deps: could not install$missing; the aarch64 test will skip" >&2
fi
