// The words for the last failed system call, for the messages of every layer that touches files
// and sockets.
#pragma once
#include <cerrno>
#include <cstring>
#include <string>

namespace deit {

// What the last failed system call set errno to, in words ("No space left on device"). Call it
// before anything else that may set errno (fclose, remove) runs.
inline std::string errno_text() { return std::strerror(errno); }

}  // namespace deit
