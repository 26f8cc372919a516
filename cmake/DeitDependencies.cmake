# Finds everything deit builds against and says what it found.
# Required: OpenMP, CLI11, nlohmann_json, stb. Optional: CUDA (+ cuBLASLt), cuDNN, NCCL, CBLAS, MPI,
# Catch2. A missing optional dependency disables its feature and is reported, never silently.

find_package(OpenMP REQUIRED COMPONENTS CXX)
find_package(Threads REQUIRED)

# Header-only libraries: the Debian package, or a folder given on the command line.
function(deit_find_header var header hint)
  find_path(${var} ${header} HINTS ${hint} PATHS /usr/include /usr/local/include
            PATH_SUFFIXES stb NO_CACHE)
  if(NOT ${var})
    message(FATAL_ERROR "${header} not found. Install the Debian package (scripts/setup.sh does) "
                        "or pass the folder that holds it with -D${ARGV3}=...")
  endif()
  set(${var} ${${var}} PARENT_SCOPE)
endfunction()
deit_find_header(DEIT_STB_DIR stb_image.h "${STB_INCLUDE_DIR}" STB_INCLUDE_DIR)
deit_find_header(DEIT_CLI11_DIR CLI/CLI.hpp "${CLI11_INCLUDE_DIR}" CLI11_INCLUDE_DIR)
deit_find_header(DEIT_JSON_DIR nlohmann/json.hpp "${JSON_INCLUDE_DIR}" JSON_INCLUDE_DIR)

find_path(DEIT_CATCH2_DIR catch2/catch.hpp HINTS "${CATCH2_INCLUDE_DIR}" NO_CACHE)
if(DEIT_CATCH2_DIR)
  set(DEIT_HAVE_CATCH2 ON)
else()
  set(DEIT_HAVE_CATCH2 OFF)
  message(WARNING "Catch2 v2 (catch2/catch.hpp) not found: tests are not built. "
                  "Install Debian's catch2 or pass -DCATCH2_INCLUDE_DIR=...")
endif()

# CPU BLAS for the reference GEMMs. Without it the CPU kernels fall back to plain loops (slow).
# Debian's OpenMP build of OpenBLAS comes first: it shares the OpenMP thread pool of our own
# kernels, where the pthread build would run a second pool that fights it for the cores.
set(DEIT_OPENBLAS_OPENMP_LIB /usr/lib/${CMAKE_LIBRARY_ARCHITECTURE}/openblas-openmp)
set(DEIT_OPENBLAS_OPENMP_INC /usr/include/${CMAKE_LIBRARY_ARCHITECTURE}/openblas-openmp)
find_path(DEIT_CBLAS_INCLUDE cblas.h HINTS ${DEIT_OPENBLAS_OPENMP_INC}
          PATH_SUFFIXES openblas ${CMAKE_LIBRARY_ARCHITECTURE} NO_CACHE)
find_library(DEIT_CBLAS_LIB NAMES openblas cblas blas HINTS ${DEIT_OPENBLAS_OPENMP_LIB} NO_CACHE)
if(DEIT_CBLAS_INCLUDE AND DEIT_CBLAS_LIB)
  set(DEIT_HAVE_CBLAS ON)
  set(DEIT_CBLAS_NOTE "(${DEIT_CBLAS_LIB})")
else()
  set(DEIT_HAVE_CBLAS OFF)
  set(DEIT_CBLAS_NOTE "(not found: CPU GEMMs use plain loops; install libopenblas-dev)")
  message(WARNING "No CBLAS found: the CPU reference GEMMs use plain loops and are slow.")
endif()

find_package(MPI QUIET COMPONENTS CXX)
if(MPI_CXX_FOUND)
  set(DEIT_HAVE_MPI ON)
else()
  set(DEIT_HAVE_MPI OFF)
endif()

# CUDA: built for the architectures we run on (A100 = sm_80, H100/H200 = sm_90).
set(DEIT_HAVE_CUDA OFF)
set(DEIT_HAVE_CUDNN OFF)
set(DEIT_HAVE_NCCL OFF)
if(DEIT_ENABLE_CUDA)
  include(CheckLanguage)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
      set(CMAKE_CUDA_ARCHITECTURES 80 90)
    endif()
    enable_language(CUDA)
    set(CMAKE_CUDA_STANDARD 17)
    set(CMAKE_CUDA_STANDARD_REQUIRED ON)
    find_package(CUDAToolkit REQUIRED)
    set(DEIT_HAVE_CUDA ON)
    set(DEIT_CUDA_NOTE "(nvcc ${CMAKE_CUDA_COMPILER_VERSION}, sm ${CMAKE_CUDA_ARCHITECTURES})")
  else()
    set(DEIT_CUDA_NOTE "(no nvcc found: CPU-only build)")
    message(WARNING "No CUDA compiler found: building the CPU backend only.")
  endif()
else()
  set(DEIT_CUDA_NOTE "(disabled with -DDEIT_ENABLE_CUDA=OFF)")
endif()

# cuDNN and NCCL: beside the toolkit, on the system, or under -DCUDNN_ROOT / -DNCCL_ROOT.
function(deit_find_cuda_lib name header lib root)
  set(have OFF)
  set(note "")
  if(DEIT_HAVE_CUDA)
    find_path(${name}_INCLUDE ${header} HINTS "${root}/include" ${CUDAToolkit_INCLUDE_DIRS} NO_CACHE)
    find_library(${name}_LIBRARY ${lib} HINTS "${root}/lib" "${root}/lib64" ${CUDAToolkit_LIBRARY_DIR}
                 NO_CACHE)
    if(${name}_INCLUDE AND ${name}_LIBRARY)
      set(have ON)
      set(note "(${${name}_LIBRARY})")
      add_library(deit::${lib} INTERFACE IMPORTED GLOBAL)
      target_include_directories(deit::${lib} INTERFACE ${${name}_INCLUDE})
      target_link_libraries(deit::${lib} INTERFACE ${${name}_LIBRARY})
    else()
      set(note "(not found: its features are disabled; pass -D${name}_ROOT=...)")
      message(WARNING "${name} not found (${header}, lib${lib}): its features are disabled.")
    endif()
  else()
    set(note "(needs the CUDA backend)")
  endif()
  set(DEIT_HAVE_${name} ${have} PARENT_SCOPE)
  set(DEIT_${name}_NOTE ${note} PARENT_SCOPE)
endfunction()
deit_find_cuda_lib(CUDNN cudnn.h cudnn "${CUDNN_ROOT}")
deit_find_cuda_lib(NCCL nccl.h nccl "${NCCL_ROOT}")

# One interface target carrying the feature switches every layer sees.
add_library(deit_config INTERFACE)
target_compile_definitions(deit_config INTERFACE
  DEIT_HAVE_CUDA=$<BOOL:${DEIT_HAVE_CUDA}>
  DEIT_HAVE_CUDNN=$<BOOL:${DEIT_HAVE_CUDNN}>
  DEIT_HAVE_NCCL=$<BOOL:${DEIT_HAVE_NCCL}>
  DEIT_HAVE_CBLAS=$<BOOL:${DEIT_HAVE_CBLAS}>
  DEIT_HAVE_MPI=$<BOOL:${DEIT_HAVE_MPI}>)
target_include_directories(deit_config INTERFACE ${PROJECT_SOURCE_DIR})
# The kernel headers declare the CUDA twins with cudaStream_t, so every file that includes them
# needs the toolkit's headers, also the CPU-only ones g++ compiles (a machine that links them
# into /usr/local/include hides their absence; the H200's image does not). SYSTEM: after the
# emulated device's own cuda_runtime.h (tests/emulated), which must win there.
if(DEIT_HAVE_CUDA)
  target_include_directories(deit_config SYSTEM INTERFACE ${CUDAToolkit_INCLUDE_DIRS})
endif()
# No fused multiply-add on the host: the CPU augmentation matches Pillow and the GPU stage bit for
# bit only when each product is rounded before its sum, which GCC's default (-ffp-contract=fast)
# gives up wherever FMA exists (aarch64 hosts such as GH200, or -march=native on x86-64). The
# host half of the .cu files too: the augmentation's shared arithmetic is compiled there as well.
target_compile_options(deit_config INTERFACE
  $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -ffp-contract=off>
  $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-ffp-contract=off>)
