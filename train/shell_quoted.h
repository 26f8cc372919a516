// Paths in the commands deit prints for its user to run next (continue a run, evaluate it, make
// a missing folder). In namespace deit: the commands (apps/) and the trainer (train/) print them.
#pragma once
#include <string>

namespace deit {

// `word` as the shell reads it back: as it is when it has nothing the shell treats specially,
// else in single quotes (a single quote in it closed, escaped and reopened), so that the command
// printed with it runs when pasted.
inline std::string shell_quoted(const std::string& word) {
  constexpr char kPlain[] =
      "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-+=.,/:@%";
  if (!word.empty() && word.find_first_not_of(kPlain) == std::string::npos) return word;
  std::string quoted = "'";
  for (const char c : word) quoted += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return quoted + "'";
}

}  // namespace deit
