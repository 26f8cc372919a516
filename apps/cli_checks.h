// Checks on command-line values that CLI11 2.1 does not make itself.
#pragma once
#include <CLI/CLI.hpp>

namespace deit::apps {

// For the 64-bit seeds: CLI11 2.1 reads "-1" into an unsigned option as 2^64 - 1, and a number
// too large for it as the largest value, both without a word. This refuses anything but a whole
// number from 0 to 2^64 - 1.
CLI::Validator unsigned_64bit();

}  // namespace deit::apps
