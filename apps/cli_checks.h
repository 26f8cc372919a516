// Checks on command-line values that CLI11 2.1 does not make itself.
#pragma once
#include <string>

#include <CLI/CLI.hpp>

namespace deit::apps {

// Adds to every option of `app` and its subcommands (call it once they are all made) the checks
// CLI11 2.1 makes of no value: an empty value is refused (CLI11 takes it for the default: `--epochs
// ''` trained the recipe's 800 epochs, `--finetune ''` from scratch), and a whole number must be
// written in decimal (CLI11 reads 0042 as octal 34 and 0x10 as 16) and fit its 64 bits (CLI11 took
// the largest value for a larger one, and -1 for an unsigned one as 2^64 - 1).
void check_every_value(CLI::App& app);

// For an int option with no upper bound of its own: `min` or more, up to the largest int. CLI11
// alone answers a value past an int's 32 bits with "Could not convert: --steps = 99999999999";
// this one says "--steps: Value 99999999999 not in range 1 to 2147483647".
CLI::Validator int_at_least(int min);

// Whether `text` ends in `suffix`, letters in either case: a file name in a ".png" or a
// ".safetensors" (X.PNG is a PNG too).
bool ends_with_ignoring_case(const std::string& text, const std::string& suffix);

}  // namespace deit::apps
