# cmake -DROOT=<source tree> -DSOURCES=<list file> -DFEATURES=<text> -DOUT=<file.cpp> -P <this>
# Writes OUT, which defines deit::build_fingerprint() and deit::build_features()
# (engine/build_fingerprint.h): the first 16 hex digits of a SHA-256 over FEATURES and each file of
# SOURCES (paths relative to ROOT, one a line) with its content's SHA-256. OUT is rewritten only
# when its text changes, so a source touched but not changed recompiles and relinks nothing.
foreach(var ROOT SOURCES FEATURES OUT)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "write_build_fingerprint.cmake: -D${var}=... is missing")
  endif()
endforeach()

file(STRINGS ${SOURCES} files)
set(listing "features: ${FEATURES}\n")
foreach(file ${files})
  file(SHA256 ${ROOT}/${file} digest)
  string(APPEND listing "${digest}  ${file}\n")
endforeach()
string(SHA256 digest "${listing}")
string(SUBSTRING ${digest} 0 16 fingerprint)

set(text "// Written by cmake/write_build_fingerprint.cmake at build time: edits here are lost.
#include \"engine/build_fingerprint.h\"

namespace deit {

const char* build_fingerprint() { return \"${fingerprint}\"; }
const char* build_features() { return \"${FEATURES}\"; }

}  // namespace deit
")
set(old "")
if(EXISTS ${OUT})
  file(READ ${OUT} old)
endif()
if(NOT old STREQUAL text)
  file(WRITE ${OUT} "${text}")
endif()
