// Runs the `deit` binary under test (DEIT_BINARY) as a user would, for the CLI tests.
#pragma once
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <memory>
#include <string>

namespace deit::test {

struct CliResult {
  int exit_code;
  std::string output;  // stdout and stderr together
};

inline CliResult run_deit(const std::string& args) {
  const std::string command = std::string(DEIT_BINARY) + " " + args + " 2>&1";
  std::unique_ptr<FILE, int (*)(FILE*)> pipe(popen(command.c_str(), "r"), pclose);
  if (!pipe) return {-1, "popen failed for: " + command};
  std::string out;
  std::array<char, 4096> buf{};
  while (size_t n = fread(buf.data(), 1, buf.size(), pipe.get())) out.append(buf.data(), n);
  const int status = pclose(pipe.release());
  return {WEXITSTATUS(status), out};
}

}  // namespace deit::test
