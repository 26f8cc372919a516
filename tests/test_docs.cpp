// The README and docs/ point readers at files by path, and show deit commands: every path they
// name must exist, and every flag a command gives must be one deit takes, so that a file renamed
// or a flag dropped shows up here instead of as a dead end for the reader.
#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "tests/cli_runner.h"

namespace fs = std::filesystem;

namespace {

std::string read_text(const fs::path& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// Paths into the repository's own folders, with a file extension: `engine/autograd.h`,
// tests/test_docs.cpp. Globs (engine/ops/*.cpp) do not match, nor do placeholders in capitals
// (bench/results/DATE-GPU-compare.md).
std::set<std::string> repository_paths_in(const std::string& text) {
  static const std::regex path(
      R"((?:^|[\s`(])((?:apps|bench|data|docs|engine|kernels|model|scripts|tests|train)/)"
      R"([a-z0-9_./-]*\.[a-z]+)(?=[\s`),.:;]|$))");
  std::set<std::string> found;
  for (auto it = std::sregex_iterator(text.begin(), text.end(), path);
       it != std::sregex_iterator(); ++it) {
    std::string p = (*it)[1].str();
    while (!p.empty() && p.back() == '.') p.pop_back();  // a sentence's full stop
    found.insert(p);
  }
  return found;
}

// The commands a page shows: each line of a code block (a line ending in a backslash joined to
// the next, as the shell would; in the synopsis, an indented line continues the one before) and
// each inline code span.
std::vector<std::string> commands_in(const std::string& text) {
  std::vector<std::string> commands;
  std::istringstream lines(text);
  std::string line;
  bool in_block = false;
  while (std::getline(lines, line)) {
    if (line.rfind("```", 0) == 0) {
      in_block = !in_block;
      continue;
    }
    if (!in_block) {
      static const std::regex span("`([^`]+)`");
      for (auto it = std::sregex_iterator(line.begin(), line.end(), span);
           it != std::sregex_iterator(); ++it)
        commands.push_back((*it)[1].str());
      continue;
    }
    const bool continues = !commands.empty() && !commands.back().empty() &&
                           (commands.back().back() == '\\' ||
                            (!line.empty() && line[0] == ' ' && commands.back().back() == '|'));
    if (continues)
      commands.back() += " " + line;
    else
      commands.push_back(line);
  }
  return commands;
}

}  // namespace

TEST_CASE("every flag the README and docs/ give a deit command is one it takes", "[docs][cli]") {
  const fs::path root = DEIT_SOURCE_DIR;
  std::vector<fs::path> pages{root / "README.md"};
  for (const auto& entry : fs::directory_iterator(root / "docs"))
    if (entry.path().extension() == ".md") pages.push_back(entry.path());
  // Each subcommand's --help, read once; bench's flags are those of its three benchmarks.
  std::map<std::string, std::string> help;
  auto help_of = [&help](const std::string& command) -> const std::string& {
    if (!help.count(command)) {
      std::string text;
      for (const std::string sub : command == "bench"
                                       ? std::vector<std::string>{"kernels", "step", "data"}
                                       : std::vector<std::string>{""})
        text += deit::test::run_deit(command + (sub.empty() ? "" : " " + sub) + " --help").output;
      help[command] = text;
    }
    return help[command];
  };
  static const std::regex command(R"(\bdeit (train|eval|demo|export|info|pack|augment|bench)\b)");
  static const std::regex flag(R"((--[a-z][a-z0-9-]*))");
  size_t checked = 0;
  for (const fs::path& page : pages)
    for (std::string line : commands_in(read_text(page))) {
      for (const char* end : {" #", " && "})  // a comment or the next command
        if (line.find(end) != std::string::npos) line = line.substr(0, line.find(end));
      std::smatch deit_command;
      if (!std::regex_search(line, deit_command, command)) continue;
      const std::string flags = deit_command.suffix().str();
      for (auto it = std::sregex_iterator(flags.begin(), flags.end(), flag);
           it != std::sregex_iterator(); ++it) {
        const std::string given = (*it)[1].str();
        INFO(page.filename().string()
             << ": deit " << deit_command[1] << " ... " << given << "\n  in: " << line);
        const std::string& text = help_of(deit_command[1]);
        CHECK(std::regex_search(text, std::regex("(^|[\\s,])" + given + "([\\s,=]|$)")));
        ++checked;
      }
    }
  CHECK(checked > 40);  // the commands are still found
}

TEST_CASE("every file the README and docs/ name exists", "[docs]") {
  const fs::path root = DEIT_SOURCE_DIR;
  std::vector<fs::path> pages{root / "README.md"};
  for (const auto& entry : fs::directory_iterator(root / "docs"))
    if (entry.path().extension() == ".md") pages.push_back(entry.path());
  size_t checked = 0;
  for (const fs::path& page : pages) {
    for (const std::string& p : repository_paths_in(read_text(page))) {
      INFO(page.filename().string() << " names " << p);
      CHECK(fs::exists(root / p));
      ++checked;
    }
  }
  CHECK(checked > 50);  // the pattern still finds the paths the pages are full of
}
