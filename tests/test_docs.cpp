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

// The README and every page in docs/.
std::vector<fs::path> pages() {
  const fs::path root = DEIT_SOURCE_DIR;
  std::vector<fs::path> found{root / "README.md"};
  for (const auto& entry : fs::directory_iterator(root / "docs"))
    if (entry.path().extension() == ".md") found.push_back(entry.path());
  return found;
}

// The commands a page shows: each line of a code block (a line ending in a backslash joined to
// the next, as the shell would, and an indented line to the one before, as in the synopsis) and
// each inline code span.
std::vector<std::string> commands_in(const std::string& text) {
  std::vector<std::string> commands;
  std::istringstream lines(text);
  std::string line;
  bool in_block = false, block_start = false;
  while (std::getline(lines, line)) {
    if (line.rfind("```", 0) == 0) {
      in_block = !in_block;
      block_start = true;
      continue;
    }
    if (!in_block) {
      static const std::regex span("`([^`]+)`");
      for (auto it = std::sregex_iterator(line.begin(), line.end(), span);
           it != std::sregex_iterator(); ++it)
        commands.push_back((*it)[1].str());
      continue;
    }
    const bool continues = !block_start && !commands.empty() &&
                           ((!commands.back().empty() && commands.back().back() == '\\') ||
                            (!line.empty() && line[0] == ' '));
    block_start = false;
    if (continues)
      commands.back() += " " + line;
    else
      commands.push_back(line);
  }
  return commands;
}

// The part of a command line that is deit's: up to a comment or the next command.
std::string own_part(std::string line) {
  for (const char* end : {" #", " && "})
    if (line.find(end) != std::string::npos) line = line.substr(0, line.find(end));
  return line;
}

}  // namespace

TEST_CASE("every flag the README and docs/ give a deit command is one it takes", "[docs][cli]") {
  // Each (sub)command's options: the first column of its --help.
  std::map<std::string, std::string> help;
  auto takes = [&help](const std::string& command, const std::string& flag) {
    if (!help.count(command))
      help[command] = "\n" + deit::test::run_deit(command + " --help").output;
    return std::regex_search(help[command], std::regex("\n +(-[a-zA-Z],)?" + flag + "[ ,=\n]"));
  };
  static const std::regex deit_command(
      R"(\bdeit (train|eval|demo|export|info|pack|augment|bench)\b)");
  static const std::regex flag(R"(--[a-z][a-z0-9-]*)");
  static const std::regex benchmark(R"(^\s*\[?(kernels|step|data)\b)");
  size_t checked = 0;
  for (const fs::path& page : pages())
    for (const std::string& line : commands_in(read_text(page))) {
      const std::string own = own_part(line);
      std::smatch found;
      if (!std::regex_search(own, found, deit_command)) continue;
      // A synopsis separates alternatives with " | ": bench's name the benchmark they are for.
      const std::string rest = found.suffix().str();
      std::string benchmark_name;
      for (size_t from = 0; from != std::string::npos;) {
        const size_t bar = rest.find(" | ", from);
        const std::string part =
            rest.substr(from, bar == std::string::npos ? std::string::npos : bar - from);
        from = bar == std::string::npos ? bar : bar + 3;
        std::smatch named;
        if (std::regex_search(part, named, benchmark)) benchmark_name = named[1].str();
        const std::string of = found[1] == "bench" ? "bench " + benchmark_name : found[1].str();
        for (auto it = std::sregex_iterator(part.begin(), part.end(), flag);
             it != std::sregex_iterator(); ++it) {
          INFO(page.filename().string()
               << ": deit " << of << " ... " << it->str() << "\n  in: " << line);
          CHECK(takes(of, it->str()));
          ++checked;
        }
      }
    }
  CHECK(checked > 100);  // the commands are still found
}

TEST_CASE("every file the README and docs/ name exists", "[docs]") {
  const fs::path root = DEIT_SOURCE_DIR;
  size_t checked = 0;
  for (const fs::path& page : pages()) {
    for (const std::string& p : repository_paths_in(read_text(page))) {
      INFO(page.filename().string() << " names " << p);
      CHECK(fs::exists(root / p));
      ++checked;
    }
  }
  CHECK(checked > 50);  // the pattern still finds the paths the pages are full of
}

TEST_CASE("the README's deit info example is what deit info prints", "[docs][cli]") {
  // The block after the line `$ ./build/deit info --model deit3_base`, to its closing fence.
  const std::string readme = read_text(fs::path(DEIT_SOURCE_DIR) / "README.md");
  const std::string command = "$ ./build/deit info --model deit3_base\n";
  const size_t start = readme.find(command);
  REQUIRE(start != std::string::npos);
  const size_t body = start + command.size();
  const std::string shown = readme.substr(body, readme.find("```", body) - body);
  CHECK(deit::test::run_deit("info --model deit3_base").output == shown);
}
