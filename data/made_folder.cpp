#include "data/made_folder.h"

#include <exception>
#include <stdexcept>
#include <system_error>

namespace deit::data {
namespace fs = std::filesystem;

namespace {

// `dir` as an absolute path without a trailing separator, whose parent_path() is its parent.
fs::path folder_path(const std::string& dir) {
  fs::path p = fs::absolute(dir.empty() ? "." : dir).lexically_normal();
  return p.has_filename() ? p : p.parent_path();
}

}  // namespace

void refuse_file_in_the_way(const std::string& dir) {
  std::error_code ec;
  fs::path nearest = folder_path(dir);  // the folder, or its nearest parent that is there
  while (!fs::exists(nearest, ec) && nearest != nearest.parent_path())
    nearest = nearest.parent_path();
  if (fs::exists(nearest, ec) && !fs::is_directory(nearest, ec))
    throw std::runtime_error("cannot create the folder '" + dir + "': '" + nearest.string() +
                             "' is a file, not a folder");
}

MadeFolder::MadeFolder(const std::string& dir)
    : dir_(folder_path(dir)), exceptions_(std::uncaught_exceptions()) {
  std::error_code ec;
  for (fs::path p = dir_; !fs::exists(p, ec) && p != p.parent_path(); p = p.parent_path())
    outermost_ = p;
  fs::create_directories(dir_, ec);
  if (!ec) return;
  refuse_file_in_the_way(dir);  // "Not a directory" from the kernel: name what stands there
  throw std::runtime_error("cannot create the folder '" + dir + "': " + ec.message());
}

MadeFolder::~MadeFolder() {
  if (outermost_.empty() || std::uncaught_exceptions() <= exceptions_) return;
  std::error_code ec;
  for (fs::path p = dir_; fs::is_empty(p, ec) && !ec && fs::remove(p, ec); p = p.parent_path())
    if (p == outermost_) break;
}

std::vector<std::string> MadeFolder::made() const {
  std::vector<std::string> folders;
  if (outermost_.empty()) return folders;
  for (fs::path p = dir_;; p = p.parent_path()) {
    folders.push_back(p.string());
    if (p == outermost_) break;
  }
  return folders;
}

}  // namespace deit::data
