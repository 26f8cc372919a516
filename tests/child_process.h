// Running a test's work in a child process: work that might hang (reading a named pipe) is ended by
// an alarm there, and work that changes the process (dropping root) leaves the test runner as it
// was.
#pragma once
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <functional>
#include <string>

namespace deit::test {

struct ChildResult {
  std::string message;  // what `work` returned, sent back through a pipe
  int status = 0;       // as waitpid gives it
};

// Runs `work` in a forked child, ended by SIGALRM after `alarm_seconds` (0: never).
inline ChildResult run_in_child(const std::function<std::string()>& work,
                                unsigned alarm_seconds = 0) {
  int fds[2];
  REQUIRE(pipe(fds) == 0);
  const pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    close(fds[0]);
    alarm(alarm_seconds);
    const std::string message = work();
    const ssize_t written = write(fds[1], message.data(), message.size());
    _exit(written == static_cast<ssize_t>(message.size()) ? 0 : 1);
  }
  close(fds[1]);
  ChildResult result;
  char buffer[512];
  for (ssize_t n; (n = read(fds[0], buffer, sizeof buffer)) > 0;) result.message.append(buffer, n);
  close(fds[0]);
  waitpid(pid, &result.status, 0);
  return result;
}

}  // namespace deit::test
