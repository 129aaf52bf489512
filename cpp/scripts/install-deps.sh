#!/bin/sh
# Installs the system packages the C++ runner (cpp/) needs to build, if any is missing:
# cmake, a C++ compiler, make, libpng, libjpeg and zlib headers. Debian/Ubuntu (apt-get) only;
# elsewhere it says what to install. Run by `make cpp-deps`, hence by `make test`.
set -eu
. "$(dirname "$0")/apt-lib.sh"

packages="cmake g++ make libpng-dev libjpeg-dev zlib1g-dev"

if ! command -v dpkg-query >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1; then
    echo "cpp-deps: not a Debian/Ubuntu system; make sure cmake (>= 3.18), a C++17 compiler," \
         "libpng, libjpeg and zlib (with headers) are installed" >&2
    exit 0
fi

# shellcheck disable=SC2086
missing=$(missing_packages $packages)
if [ -z "$missing" ]; then
    exit 0
fi

if ! root_runner; then
    echo "cpp-deps: missing packages:$missing; install them with" \
         "'sudo apt-get install$missing' (the C++ tests fail to build without them)" >&2
    exit 0
fi
echo "cpp-deps: installing$missing" >&2
export DEBIAN_FRONTEND=noninteractive
$run apt-get update -qq
# shellcheck disable=SC2086
$run apt-get install -y -qq --no-install-recommends $missing
