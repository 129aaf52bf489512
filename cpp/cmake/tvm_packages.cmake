# The TVM runtime and tvm-ffi from packages unpacked out of wheels (PE_TVM_PACKAGES), for a
# build whose target cannot run this machine's Python: the aarch64 cross build. Sets what the
# PE_PYTHON path sets: TVM_PACKAGE_DIR, TVM_PACKAGE_VERSION and the target tvm_ffi::shared.
get_filename_component(PE_TVM_PACKAGES "${PE_TVM_PACKAGES}" ABSOLUTE BASE_DIR "$ENV{PWD}")
set(TVM_PACKAGE_DIR "${PE_TVM_PACKAGES}/tvm")
set(_ffi_dir "${PE_TVM_PACKAGES}/tvm_ffi")
if(NOT EXISTS "${TVM_PACKAGE_DIR}/lib/libtvm_runtime.so" OR
   NOT EXISTS "${_ffi_dir}/lib/libtvm_ffi.so" OR NOT EXISTS "${_ffi_dir}/include/tvm/ffi")
  message(FATAL_ERROR "PE_TVM_PACKAGES=${PE_TVM_PACKAGES} holds no unpacked tvm and tvm_ffi "
                      "packages; run cpp/scripts/fetch_aarch64_runtime.py first")
endif()

# The version, from the wheel's .dist-info folder (apache_tvm-<version>.dist-info).
file(GLOB _dist_info LIST_DIRECTORIES true "${PE_TVM_PACKAGES}/apache_tvm-*.dist-info")
list(LENGTH _dist_info _n)
if(NOT _n EQUAL 1)
  message(FATAL_ERROR "PE_TVM_PACKAGES=${PE_TVM_PACKAGES}: expected one apache_tvm-*.dist-info")
endif()
get_filename_component(_dist_info "${_dist_info}" NAME)
string(REGEX REPLACE "^apache_tvm-(.*)\\.dist-info$" "\\1" TVM_PACKAGE_VERSION "${_dist_info}")

# tvm-ffi's own CMake package asks Python for these paths; here they are known.
add_library(tvm_ffi::shared SHARED IMPORTED)
set_target_properties(tvm_ffi::shared PROPERTIES
  IMPORTED_LOCATION "${_ffi_dir}/lib/libtvm_ffi.so"
  INTERFACE_INCLUDE_DIRECTORIES "${_ffi_dir}/include"
  INTERFACE_COMPILE_FEATURES cxx_std_17)
