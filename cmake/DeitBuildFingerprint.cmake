# The build fingerprint (engine/build_fingerprint.h): a hash of the sources that make the deit
# binary and of the optional parts built in. Two builds of one source tree get the same one, in
# whatever folder; an edit to any of those sources gives another at the next build, without running
# cmake by hand. The processes of a job compare it before anything else (agree_on_build,
# train/rank_agreement.h): two builds may differ in the collectives they call.

# The folders whose code goes into the binary (not tests/); with them, the build's own files (the
# top CMakeLists.txt and cmake/).
set(DEIT_FINGERPRINT_FOLDERS engine kernels model data train bench apps)

# Makes `target`, the static library of the fingerprint. A library of its own, linked to nothing
# built: so its hashing waits for no other part of the build, and no other part for more than the
# hashing (a custom command of deit_engine would wait for the CUDA kernels' library, and hold back
# every object compiled after deit_engine's). The sources are globbed with CONFIGURE_DEPENDS, so that
# a file added or removed is seen at the next build too.
function(deit_add_build_fingerprint_library target)
  set(patterns ${PROJECT_SOURCE_DIR}/cmake/*.cmake)
  foreach(folder ${DEIT_FINGERPRINT_FOLDERS})
    foreach(pattern *.cpp *.h *.cu *.cuh CMakeLists.txt)
      list(APPEND patterns ${PROJECT_SOURCE_DIR}/${folder}/${pattern})
    endforeach()
  endforeach()
  file(GLOB_RECURSE sources CONFIGURE_DEPENDS ${patterns})
  list(APPEND sources ${PROJECT_SOURCE_DIR}/CMakeLists.txt)  # not globbed: a glob would walk all
  # A build folder inside one of those folders holds generated sources (this fingerprint's among
  # them, which would then never settle): not part of the tree.
  set(relative_sources)
  foreach(source ${sources})
    string(FIND "${source}" "${PROJECT_BINARY_DIR}/" in_build_folder)
    if(NOT in_build_folder EQUAL 0)
      file(RELATIVE_PATH relative ${PROJECT_SOURCE_DIR} ${source})
      list(APPEND relative_sources ${relative})
    endif()
  endforeach()
  list(SORT relative_sources)  # the glob's order is the file system's

  # The optional parts that change what the binary does ("cpu" or "cuda" first).
  set(features)
  if(DEIT_HAVE_CUDA)
    list(APPEND features cuda)
  else()
    list(APPEND features cpu)
  endif()
  foreach(part CUDNN NCCL MPI CBLAS)
    if(DEIT_HAVE_${part})
      string(TOLOWER ${part} name)
      list(APPEND features ${name})
    endif()
  endforeach()
  list(JOIN features ", " features)

  # Paths relative to the source tree, so that the folder it lies in is no part of the hash. Written
  # only when the list changes (file(CONFIGURE) keeps an unchanged file as it is).
  set(dir ${PROJECT_BINARY_DIR}/generated)
  list(JOIN relative_sources "\n" source_lines)
  file(CONFIGURE OUTPUT ${dir}/build_fingerprint_sources.txt CONTENT "${source_lines}\n" @ONLY)
  set(script ${PROJECT_SOURCE_DIR}/cmake/write_build_fingerprint.cmake)
  add_custom_command(
    OUTPUT ${dir}/build_fingerprint.cpp
    COMMAND ${CMAKE_COMMAND} -DROOT=${PROJECT_SOURCE_DIR}
            -DSOURCES=${dir}/build_fingerprint_sources.txt "-DFEATURES=${features}"
            -DOUT=${dir}/build_fingerprint.cpp -P ${script}
    DEPENDS ${sources} ${script} ${dir}/build_fingerprint_sources.txt
    COMMENT "Hashing deit's sources for its build fingerprint"
    VERBATIM)
  add_library(${target} STATIC ${dir}/build_fingerprint.cpp)
  target_link_libraries(${target} PRIVATE deit_config)  # an interface: for the include folder
endfunction()
