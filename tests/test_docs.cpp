// The README and docs/ point readers at files by path: every path they name must exist, so that
// a file renamed or removed shows up here instead of as a dead end for the reader.
#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>
#include <regex>
#include <set>
#include <sstream>
#include <string>

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

}  // namespace

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
