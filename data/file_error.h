// How data/ words a file it cannot read or write. For data/'s own .cpp files: the rest of deit
// sees these failures only as the DataError (data/image.h) or std::runtime_error they throw.
#pragma once
#include <cerrno>
#include <cstring>
#include <string>

#include "data/image.h"

namespace deit::data {

// Throws DataError "NAME: REASON", the form every unusable file of a dataset is reported in.
[[noreturn]] inline void fail_file(const std::string& name, const std::string& reason) {
  throw DataError(name + ": " + reason);
}

// What the last failed system call set errno to, in words ("No space left on device"). Called
// before anything else that may set errno (fclose, remove) runs.
inline std::string errno_text() { return std::strerror(errno); }

}  // namespace deit::data
