// The reference code's options (facebookresearch/deit main.py and the commands of its
// README_revenge.md) that deit names otherwise or has no use for: people arrive with those command
// lines, and an "unexpected argument" alone does not tell them what deit calls the same thing.
#pragma once
#include <string>
#include <vector>

namespace deit::apps {

// For each argument of `args` that is such an option (--NAME or --NAME=VALUE), a line saying what
// deit has in its place; none for the others.
std::vector<std::string> reference_option_notes(const std::vector<std::string>& args);

}  // namespace deit::apps
