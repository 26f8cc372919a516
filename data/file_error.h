// How data/ words a file it cannot read or write. For data/'s own .cpp files: the rest of deit
// sees these failures only as the DataError (data/image.h) or std::runtime_error they throw.
#pragma once
#include <string>

#include "data/image.h"
#include "engine/errno_text.h"

namespace deit::data {

// Throws DataError "NAME: REASON", the form every unusable file of a dataset is reported in.
[[noreturn]] inline void fail_file(const std::string& name, const std::string& reason) {
  throw DataError(name + ": " + reason);
}

}  // namespace deit::data
