// Runs the built `deit` binary as a user would, for the command-line tests.
#pragma once
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <memory>
#include <optional>
#include <string>

#include <catch2/catch.hpp>

namespace deit::test {

struct CliResult {
  int exit_code;
  std::string output;  // stdout and stderr together
};

// Runs `command` through the shell, stdout and stderr together.
inline CliResult run_shell(const std::string& command) {
  std::unique_ptr<FILE, int (*)(FILE*)> pipe(popen((command + " 2>&1").c_str(), "r"), pclose);
  REQUIRE(pipe);
  std::string out;
  std::array<char, 4096> buf{};
  while (size_t n = fread(buf.data(), 1, buf.size(), pipe.get())) out.append(buf.data(), n);
  const int status = pclose(pipe.release());
  return {WEXITSTATUS(status), out};
}

// `args` is appended to the binary's path and run through the shell, in folder `cwd` if given.
inline CliResult run_deit(const std::string& args, const std::string& cwd = "") {
  return run_shell((cwd.empty() ? "" : "cd '" + cwd + "' && ") + std::string(DEIT_BINARY) + " " +
                   args);
}

// Starts `deit args`, reads its (line-oriented, non-terminal) progress on stderr, and sends it
// `signal` as soon as a line starts with `signal_at`. Returns its wait status when the signal was
// sent there, and what it wrote (stdout and stderr). With `reader_gone`, the pipe's reading end is
// closed just before the signal, as Ctrl-C ends `tee` in `deit train ... | tee`: deit starts with
// SIGPIPE's default action, and the output ends at `signal_at`'s line.
struct Signalled {
  int status;
  std::string output;
};
inline std::optional<Signalled> run_and_signal_at(const std::string& args,
                                                  const std::string& signal_at, int signal,
                                                  bool reader_gone = false) {
  int fds[2];
  REQUIRE(pipe(fds) == 0);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, fds[1], STDERR_FILENO);
  posix_spawn_file_actions_adddup2(&actions, fds[1], STDOUT_FILENO);
  posix_spawn_file_actions_addclose(&actions, fds[0]);
  // SIGPIPE as a shell leaves it, whatever this test process does with it.
  posix_spawnattr_t attributes;
  posix_spawnattr_init(&attributes);
  sigset_t defaults;
  sigemptyset(&defaults);
  sigaddset(&defaults, SIGPIPE);
  posix_spawnattr_setsigdefault(&attributes, &defaults);
  posix_spawnattr_setflags(&attributes, POSIX_SPAWN_SETSIGDEF);
  // exec replaces the shell, so the pid is deit's own.
  const std::string exec_command = "exec " + std::string(DEIT_BINARY) + " " + args;
  const char* argv[] = {"/bin/sh", "-c", exec_command.c_str(), nullptr};
  pid_t pid = 0;
  REQUIRE(posix_spawn(&pid, "/bin/sh", &actions, &attributes, const_cast<char**>(argv), environ) ==
          0);
  posix_spawn_file_actions_destroy(&actions);
  posix_spawnattr_destroy(&attributes);
  close(fds[1]);
  FILE* err = fdopen(fds[0], "r");
  bool sent = false;
  std::string output;
  char line[1024];
  while (err && fgets(line, sizeof line, err)) {
    output += line;
    if (!sent && std::string(line).rfind(signal_at, 0) == 0) {
      if (reader_gone) {
        fclose(err);
        err = nullptr;
      }
      kill(pid, signal);
      sent = true;
    }
  }
  if (err) fclose(err);
  int status = 0;
  waitpid(pid, &status, 0);
  if (!sent) return std::nullopt;
  return Signalled{status, output};
}

}  // namespace deit::test
