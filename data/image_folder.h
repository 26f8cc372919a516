// The ImageFolder layout torchvision reads: ROOT/<class>/**/<image>, one class per subfolder,
// classes sorted by name and numbered from 0, images sorted by their whole path within a class
// (torchvision sorts folder by folder: a class with subfolders lists the same images, maybe in
// another order).
#pragma once
#include <string>
#include <vector>

#include "data/image_source.h"

namespace deit::data {

class ImageFolder : public ImageSource {
 public:
  // Lists the images under `root` (decoding nothing: a bad file is found, warned about and skipped
  // when it is loaded). Hidden files and folders (".name") are left out, and so are files whose
  // extension deit cannot decode, with a warning per extension that counts them and names
  // one. Broken links and image files directly in `root` are left out with a warning. Throws
  // DataError naming `root` when it is missing, has no class folders, or has no images at all,
  // and naming the folder that cannot be listed. `warn` false keeps these warnings to itself (the
  // ranks of a data-parallel run but the first, which would repeat its).
  explicit ImageFolder(const std::string& root, bool warn = true);

  size_t size() const override { return files_.size(); }
  const std::vector<std::string>& class_names() const override { return class_names_; }
  int label(size_t index) const override { return files_.at(index).label; }
  ImageU8 load(size_t index) const override;
  std::string describe(size_t index) const override { return files_.at(index).path; }
  std::string listing_fingerprint() const override;

 private:
  struct File {
    std::string path;
    int label;
  };
  std::string root_;
  std::vector<std::string> class_names_;
  std::vector<File> files_;
};

// True for the extensions deit decodes (case-insensitive): jpg jpeg jfif png bmp gif tga psd
// ppm pgm pnm.
bool has_image_extension(const std::string& path);

}  // namespace deit::data
