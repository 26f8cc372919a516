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

MadeFolder::MadeFolder(const std::string& dir)
    : dir_(folder_path(dir)), exceptions_(std::uncaught_exceptions()) {
  std::error_code ec;
  for (fs::path p = dir_; !fs::exists(p, ec) && p != p.parent_path(); p = p.parent_path())
    outermost_ = p;
  fs::create_directories(dir_, ec);
  if (!ec) return;
  // "Not a directory" from the kernel: name what stands where a folder is needed.
  const fs::path in_the_way = outermost_.empty() ? dir_ : outermost_.parent_path();
  std::error_code type_error;
  if (fs::exists(in_the_way, type_error) && !fs::is_directory(in_the_way, type_error))
    throw std::runtime_error("cannot create the folder '" + dir + "': '" + in_the_way.string() +
                             "' is a file, not a folder");
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
