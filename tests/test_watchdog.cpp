// engine/watchdog.h: the deadline on the blocking NCCL calls that wait for other ranks. Its expiry
// ends the process, so that case runs in a child (tests/child_process.h).
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <iterator>
#include <stdexcept>
#include <string>
#include <thread>

#include "engine/watchdog.h"
#include "tests/captured_stderr.h"
#include "tests/child_process.h"
#include "tests/test_data_helpers.h"

using namespace deit;
using namespace std::chrono_literals;

namespace {

// Runs `call` under a watchdog of `limit` in a child process whose stderr goes to `stderr_path`
// (after `prepare`, which returns what went wrong or ""), and checks that the watchdog, not the
// call's return, ended the child.
void check_ended_by_watchdog(
    std::chrono::milliseconds limit, const char* what, const std::function<void()>& call,
    const std::string& stderr_path,
    const std::function<std::string()>& prepare = [] { return std::string(); }) {
  const test::ChildResult child = test::run_in_child(
      [&] {
        if (const std::string failed = prepare(); !failed.empty()) return failed;
        test::stderr_of(stderr_path, [&] { exit_unless_returns_within(limit, what, call); });
        return std::string("the call returned, and the watchdog let it");
      },
      /*alarm_seconds=*/30);
  CHECK(child.message.empty());
  REQUIRE(WIFEXITED(child.status));
  CHECK(WEXITSTATUS(child.status) == EXIT_FAILURE);
}

std::string contents(const std::string& path) {
  std::ifstream in(path);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

}  // namespace

TEST_CASE("a call that returns within the watchdog's limit returns as usual", "[watchdog]") {
  int calls = 0;
  const auto start = std::chrono::steady_clock::now();
  exit_unless_returns_within(60s, "unused", [&] { ++calls; });
  CHECK(calls == 1);
  // The watchdog does not sit out its limit once the call has returned.
  CHECK(std::chrono::steady_clock::now() - start < 10s);
}

TEST_CASE("the watchdog lets go as soon as a call that took a while returns", "[watchdog]") {
  // A call longer than it takes the watching thread to start waiting: only the signal of the
  // return, not the end of the limit, lets it go.
  const auto start = std::chrono::steady_clock::now();
  exit_unless_returns_within(60s, "unused", [] { std::this_thread::sleep_for(200ms); });
  CHECK(std::chrono::steady_clock::now() - start < 10s);
}

TEST_CASE("a call that outlasts the watchdog's limit is ended at the limit and not later",
          "[watchdog]") {
  // Returning 1.5 s after the limit (slack for a loaded machine), well before twice the limit.
  test::TempDir dir;
  check_ended_by_watchdog(
      2s, "the call did not return in time", [] { std::this_thread::sleep_for(3500ms); },
      dir.file("stderr.txt"));
}

TEST_CASE("an exception leaves the watchdog's call as it came", "[watchdog]") {
  CHECK_THROWS_WITH(
      exit_unless_returns_within(60s, "unused", [] { throw std::runtime_error("from the call"); }),
      "from the call");
}

TEST_CASE("a call still blocked at the watchdog's limit ends the process with the message",
          "[watchdog]") {
  test::TempDir dir;
  const std::string log = dir.file("stderr.txt");
  check_ended_by_watchdog(
      200ms, "rank 1 of 2: ncclCommInitRank did not return in time",
      [] { std::this_thread::sleep_for(60s); }, log);
  CHECK(contents(log) == "deit: error: rank 1 of 2: ncclCommInitRank did not return in time\n");
}

TEST_CASE("what the process wrote to stdout before the watchdog ended it is not lost",
          "[watchdog]") {
  // stdout to a file is block-buffered, and std::_Exit does not flush it: the watchdog must, or the
  // last lines of a hung rank's log (where it was, what it did) are lost.
  test::TempDir dir;
  const std::string log = dir.file("stdout.txt");
  std::fflush(stdout);  // the child starts with nothing of the runner's own output pending
  check_ended_by_watchdog(
      200ms, "the call did not return in time", [] { std::this_thread::sleep_for(60s); },
      dir.file("stderr.txt"),
      [&] {
        FILE* file = std::fopen(log.c_str(), "w");
        if (!file || dup2(fileno(file), STDOUT_FILENO) < 0) return std::string("no stdout file");
        std::printf("step 7 of 10 done; ");  // no newline: buffered whatever the buffering
        return std::string();
      });
  CHECK(contents(log) == "step 7 of 10 done; ");
}
