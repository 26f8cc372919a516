// Runs the built `deit` binary as a user would, for the command-line tests.
#pragma once
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <memory>
#include <string>

#include <catch2/catch.hpp>

namespace deit::test {

struct CliResult {
  int exit_code;
  std::string output;  // stdout and stderr together
};

// `args` is appended to the binary's path and run through the shell, in folder `cwd` if given.
inline CliResult run_deit(const std::string& args, const std::string& cwd = "") {
  const std::string command =
      (cwd.empty() ? "" : "cd '" + cwd + "' && ") + std::string(DEIT_BINARY) + " " + args + " 2>&1";
  std::unique_ptr<FILE, int (*)(FILE*)> pipe(popen(command.c_str(), "r"), pclose);
  REQUIRE(pipe);
  std::string out;
  std::array<char, 4096> buf{};
  while (size_t n = fread(buf.data(), 1, buf.size(), pipe.get())) out.append(buf.data(), n);
  const int status = pclose(pipe.release());
  return {WEXITSTATUS(status), out};
}

}  // namespace deit::test
