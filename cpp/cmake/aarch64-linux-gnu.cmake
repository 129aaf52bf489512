# Cross build of pe_infer for 64-bit Arm Linux with Debian's cross toolchain
# (g++-aarch64-linux-gnu) and the arm64 -dev packages of libpng, libjpeg and zlib installed
# beside the native ones (Debian multiarch, /usr/lib/aarch64-linux-gnu): `make cross-deps`.
# Multiarch rather than building pe_infer without image decoding: zlib (the artifact checksums)
# is needed either way, no source changes, and the board's pe_infer reads PNG and JPEG too.
# The TVM runtime and tvm-ffi come from the aarch64 wheels (PE_TVM_PACKAGES):
#
#   cmake -S cpp -B build/cpp-aarch64 -DCMAKE_TOOLCHAIN_FILE=cpp/cmake/aarch64-linux-gnu.cmake \
#         -DPE_TVM_PACKAGES=build/aarch64/packages
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)
# Libraries from the arm64 multiarch folders (/usr/lib/aarch64-linux-gnu) and the cross
# toolchain's root; the host's are in /usr/lib/x86_64-linux-gnu, which is not searched.
# Programs (cmake's helpers) are the host's.
set(CMAKE_LIBRARY_ARCHITECTURE aarch64-linux-gnu)
set(CMAKE_FIND_ROOT_PATH /usr/aarch64-linux-gnu)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY BOTH)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE BOTH)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE BOTH)
# Run under qemu-user when a build step or ctest needs to execute a target program (the arm64
# loader and C library: multiarch, /lib/aarch64-linux-gnu).
find_program(PE_QEMU_AARCH64 NAMES qemu-aarch64-static qemu-aarch64)
if(PE_QEMU_AARCH64)
  set(CMAKE_CROSSCOMPILING_EMULATOR "${PE_QEMU_AARCH64}")
endif()
