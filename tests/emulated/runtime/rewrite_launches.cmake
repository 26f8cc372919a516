# cmake -DIN=kernels/cuda/x.cu -DOUT=build/.../x.cpp -P rewrite_launches.cmake
# Writes the C++ that the emulated build compiles for a .cu file: the same source, its launches
# `kernel<<<config>>>(args)` spelled as kernel_launch.h's operators, and a #line so that compiler
# messages and __FILE__ name the .cu file.
file(READ "${IN}" source)
string(REPLACE "<<<" " ^ ::deit_emu::LaunchConfig(__FILE__, __LINE__, " source "${source}")
string(REPLACE ">>>()" ") ^ ::deit_emu::kernel_args()" source "${source}")
string(REPLACE ">>>(" ") ^ ::deit_emu::kernel_args(" source "${source}")
file(RELATIVE_PATH name "${ROOT}" "${IN}")
set(content "#line 1 \"${name}\"\n${source}")
if(EXISTS "${OUT}")
  file(READ "${OUT}" old)
  if(old STREQUAL content)
    return()
  endif()
endif()
file(WRITE "${OUT}" "${content}")
