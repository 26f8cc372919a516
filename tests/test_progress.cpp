// What train::Progress writes to stderr where it is not a terminal (a log file, CI).
#include <catch2/catch.hpp>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "tests/captured_stderr.h"
#include "tests/test_data_helpers.h"
#include "train/progress.h"

namespace {

using deit::test::TempDir;
using deit::train::Progress;

// What `show` writes to stderr, there a file (not a terminal: plain lines).
std::string stderr_of(const TempDir& dir, const std::function<void()>& show) {
  return deit::test::stderr_of(dir.file("stderr.txt"), show);
}

size_t lines_in(const std::string& text) {
  size_t n = 0;
  for (const char c : text) n += c == '\n';
  return n;
}

}  // namespace

TEST_CASE("progress lines: one every tenth, none repeated when work stops between them",
          "[train][progress]") {
  TempDir dir;
  // A whole epoch of 20 steps: a line at each tenth, the last one saying what it took.
  const std::string whole = stderr_of(dir, [] {
    Progress progress("epoch 1/2", 20, true);
    for (int64_t done = 1; done <= 20; ++done) progress.update(done, done * 8, 0.5);
    progress.finish();
  });
  INFO(whole);
  CHECK(lines_in(whole) == 10);
  CHECK(whole.find('\r') == std::string::npos);
  const std::string last_line = whole.substr(whole.rfind('\n', whole.size() - 2) + 1);
  CHECK(last_line.rfind("epoch 1/2  20/20  ", 0) == 0);
  CHECK(last_line.find(" took ") != std::string::npos);

  // Stopped (a stop signal) right after a step whose line was shown: that line, once.
  const std::string stopped_on_a_line = stderr_of(dir, [] {
    Progress progress("epoch 2/2", 20, true);
    for (int64_t done = 1; done <= 4; ++done) progress.update(done, done * 8, 0.5);
    progress.finish();
  });
  INFO(stopped_on_a_line);
  CHECK(lines_in(stopped_on_a_line) == 2);  // 2/20 and 4/20
  CHECK(stopped_on_a_line.find("4/20") == stopped_on_a_line.rfind("4/20"));

  // Stopped between two tenths: the step it stopped at, shown once at the end.
  const std::string stopped_between = stderr_of(dir, [] {
    Progress progress("epoch 2/2", 20, true);
    for (int64_t done = 1; done <= 5; ++done) progress.update(done, done * 8, 0.5);
    progress.finish();
  });
  INFO(stopped_between);
  CHECK(lines_in(stopped_between) == 3);  // 2/20, 4/20 and 5/20
  CHECK(stopped_between.find("5/20") != std::string::npos);

  // A resumed epoch that stops before a step of its own shows nothing (no line of zero loss).
  const std::string nothing_new = stderr_of(dir, [] {
    Progress progress("epoch 2/2", 20, true, 7);
    progress.finish();
  });
  CHECK(nothing_new.empty());
}
