// What code run in this process writes to stderr, for tests of warnings and progress lines that go
// nowhere else. Written through a file, which is no terminal: progress draws plain lines.
#pragma once
#include <fcntl.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <string>

namespace deit::test {

// Runs `run` with stderr sent to the file at `path` (made or emptied), and returns what it wrote.
// Threads that `run` starts write there too while it runs.
template <typename Run>
std::string stderr_of(const std::string& path, Run&& run) {
  std::fflush(stderr);
  const int saved = dup(STDERR_FILENO);
  const int file = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  REQUIRE(file >= 0);
  REQUIRE(dup2(file, STDERR_FILENO) >= 0);
  close(file);
  struct Restore {
    int saved;
    ~Restore() {
      std::fflush(stderr);
      dup2(saved, STDERR_FILENO);
      close(saved);
    }
  } restore{saved};
  run();
  std::fflush(stderr);
  std::ifstream written(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(written), std::istreambuf_iterator<char>());
}

}  // namespace deit::test
