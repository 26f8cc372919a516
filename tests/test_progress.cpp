// What train::Progress writes to stderr where it is not a terminal (a log file, CI).
#include <fcntl.h>
#include <unistd.h>
#include <catch2/catch.hpp>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "tests/captured_stderr.h"
#include "tests/child_process.h"
#include "tests/test_data_helpers.h"
#include "train/progress.h"

namespace {

using deit::test::TempDir;
using deit::train::format_duration;
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

size_t occurrences(const std::string& what, const std::string& text) {
  size_t n = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

// What `show` drew, and the time it took, where stderr is a terminal: it runs in a child whose
// stderr is a pseudo-terminal, read back from the terminal's other end.
struct Drawn {
  std::string text;
  std::chrono::nanoseconds took;
};

Drawn drawn_on_a_terminal(const std::function<void()>& show) {
  const deit::test::ChildResult child = deit::test::run_in_child(
      [&] {
        const int master = posix_openpt(O_RDWR | O_NOCTTY);
        if (master < 0 || grantpt(master) != 0 || unlockpt(master) != 0) return std::string("pty");
        const int terminal = open(ptsname(master), O_RDWR | O_NOCTTY);
        if (terminal < 0 || dup2(terminal, STDERR_FILENO) < 0) return std::string("pty");
        const auto started = std::chrono::steady_clock::now();
        show();
        const auto took = std::chrono::duration_cast<std::chrono::nanoseconds>(
            std::chrono::steady_clock::now() - started);
        std::fflush(stderr);
        fcntl(master, F_SETFL, O_NONBLOCK);
        std::string drawn = std::to_string(took.count()) + "\n";
        char buffer[512];
        for (ssize_t n; (n = read(master, buffer, sizeof buffer)) > 0;) drawn.append(buffer, n);
        return drawn;
      },
      30);
  INFO(child.message);
  REQUIRE(WIFEXITED(child.status));
  const size_t took_end = child.message.find('\n');
  REQUIRE(took_end != std::string::npos);
  return {child.message.substr(took_end + 1),
          std::chrono::nanoseconds(std::stoll(child.message.substr(0, took_end)))};
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

TEST_CASE("durations read as seconds, minutes and seconds, or hours and minutes",
          "[train][progress]") {
  CHECK(format_duration(0) == "0s");
  CHECK(format_duration(-3) == "0s");  // a clock that stepped back is no negative time
  CHECK(format_duration(59.4) == "59s");
  CHECK(format_duration(59.6) == "1m00s");
  CHECK(format_duration(3599) == "59m59s");
  CHECK(format_duration(3600) == "1h00m");
  CHECK(format_duration(7 * 3600 + 5 * 60 + 59) == "7h05m");
  CHECK(format_duration(30 * 3600) == "30h00m");
}

TEST_CASE("a resumed epoch's progress lines fall on the tenths, and its last shows the final loss",
          "[train][progress]") {
  TempDir dir;
  // Resumed after 6 of 20 steps (3 tenths): step 7 is in the same tenth, so the first line is 8.
  const std::string resumed = stderr_of(dir, [] {
    Progress progress("epoch 2/2", 20, true, 6);
    progress.update(7, 56, 0.5);
    progress.update(8, 64, 0.5);
    progress.finish();
  });
  INFO(resumed);
  CHECK(lines_in(resumed) == 1);
  CHECK(resumed.rfind("epoch 2/2  8/20  ", 0) == 0);

  // An evaluation ends with the loss over the whole split, which it learns only at the end: the
  // last line shows that one, not the last update's.
  const std::string eval = stderr_of(dir, [] {
    Progress progress("eval", 4, true);
    progress.update(2, 16, 0.5);
    progress.finish(4, 32, 0.25);
  });
  INFO(eval);
  REQUIRE(lines_in(eval) == 2);
  CHECK(eval.substr(eval.find('\n') + 1).rfind("eval  4/4  ", 0) == 0);
  CHECK(eval.find("loss 0.2500") != std::string::npos);

  // Nothing to do (a split with no batch for this process): no line, and no division by zero.
  const std::string empty = stderr_of(dir, [] {
    Progress progress("eval", 0, true);
    progress.update(0, 0, 0.0);
    progress.finish();
  });
  CHECK(empty.empty());
}

TEST_CASE("a resumed epoch's time to go is paced by the steps this run took",
          "[train][progress]") {
  TempDir dir;
  // Resumed after 10 of 20 steps, two steps taken in about 0.4 s: 8 such steps remain, about
  // 1.6 s. Paced by every step done (12), the resumed ones taking no time, it would say 0.3 s.
  constexpr double kStepSeconds = 0.4;
  const auto started = std::chrono::steady_clock::now();
  const std::string resumed = stderr_of(dir, [&] {
    Progress progress("epoch 2/2", 20, true, 10);
    std::this_thread::sleep_for(std::chrono::duration<double>(kStepSeconds));
    progress.update(12, 16, 0.5);
  });
  const double most = std::chrono::duration<double>(std::chrono::steady_clock::now() - started)
                          .count();
  INFO(resumed);
  const size_t eta_at = resumed.find(" eta ");
  REQUIRE(eta_at != std::string::npos);
  const double eta = std::stod(resumed.substr(eta_at + 5));  // whole seconds, "4s"
  // 8 steps to go at half the elapsed time each, shown to the second.
  CHECK(eta >= std::floor(4 * kStepSeconds));
  CHECK(eta <= std::ceil(4 * most));
}

TEST_CASE("on a terminal the progress bar redraws one line and ends it when done",
          "[train][progress]") {
  const std::string drawn = drawn_on_a_terminal([] {
                              Progress progress("epoch 1/1", 4, true);
                              for (int64_t done = 1; done <= 4; ++done)
                                progress.update(done, done * 8, 0.5);
                              progress.finish();
                            }).text;
  INFO(drawn);
  // Each drawing returns to the line's start and clears what a longer one left after it. (Steps
  // before the last are drawn only 100 ms apart, which a loaded machine can reach.)
  CHECK_THAT(drawn, Catch::StartsWith("\repoch 1/1 ["));
  CHECK(drawn.find("\repoch 1/1 [########################] 4/4  ") != std::string::npos);
  CHECK(drawn.find("\x1b[K") != std::string::npos);
  // The last step is drawn whatever the time since the one before, and the line is ended (the
  // terminal shows "\n" as "\r\n"), so that what follows starts on a line of its own.
  CHECK(lines_in(drawn) == 1);
  CHECK_THAT(drawn, Catch::EndsWith("\x1b[K\r\n"));
  CHECK(drawn.find(" took ") != std::string::npos);
}

TEST_CASE(
    "on a terminal the progress bar is redrawn at most ten times a second, the last step at once",
    "[train][progress]") {
  // Steps 4 ms apart or more, for over 200 ms: each drawing comes 100 ms or more after the one
  // before (the first after the start), so there are at most as many as tenths of a second gone,
  // and at least the one after the first 100 ms.
  constexpr int64_t kSteps = 60;
  const Drawn steps = drawn_on_a_terminal([] {
    Progress progress("epoch 1/1", kSteps + 1, true);
    for (int64_t done = 1; done <= kSteps; ++done) {
      std::this_thread::sleep_for(std::chrono::milliseconds(4));
      progress.update(done, done * 8, 0.5);
    }
  });
  INFO(steps.text);
  INFO("drawn over " << steps.took.count() << " ns");
  const size_t drawings = occurrences("\repoch 1/1 [", steps.text);
  CHECK(drawings >= 1);
  CHECK(drawings <= static_cast<size_t>(steps.took / std::chrono::milliseconds(100)));
  // The last step, which a person waits for, is drawn even right after the start (or after
  // another drawing), before whatever the run does next.
  const std::string last = drawn_on_a_terminal([] {
                             Progress progress("eval", 4, true);
                             progress.update(4, 32, 0.5);
                           }).text;
  CHECK_THAT(last, Catch::StartsWith("\reval [########################] 4/4  "));
}
