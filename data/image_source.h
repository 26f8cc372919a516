// What the training pipeline reads from: a labelled, indexed collection of images, backed by an
// image folder (data/image_folder.h) or a packed shard file (data/shard.h), plus the record of the
// files it had to skip.
#pragma once
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "data/image.h"

namespace deit::data {

class ImageSource {
 public:
  virtual ~ImageSource() = default;

  virtual size_t size() const = 0;
  virtual const std::vector<std::string>& class_names() const = 0;
  virtual int label(size_t index) const = 0;
  // Decodes (or copies out) image `index`. Thread-safe. Throws DataError naming the file or the
  // shard record when the image is unusable.
  virtual ImageU8 load(size_t index) const = 0;
  // Where image `index` comes from, for messages: a file path or "<shard> record <n>".
  virtual std::string describe(size_t index) const = 0;
  // Which image each index holds, in 16 hex digits after the kind of source: equal for two
  // listings that put the same images at the same indices. A folder says it by relative path and
  // label ("folder:..."; the root may move), a shard by each record's pixel checksum and label
  // ("shard:..."), so two sources of one kind can be compared, and a folder and its shard cannot.
  // "" for a source that cannot say. A resumed run tells by it a split whose files were exchanged
  // for as many others.
  virtual std::string listing_fingerprint() const { return ""; }
};

// Opens `path` as a shard file when it is a regular file, as an image folder when it is a
// directory. Throws DataError naming `path` when it is neither or cannot be read.
std::unique_ptr<ImageSource> open_image_source(const std::string& path);

// Opens one split of a dataset root: `root/<split>.shard` when that file exists, otherwise the
// image folder `root/<split>/`. When both exist it says on stderr that the shard is read (a shard
// packed before the folder changed would otherwise be trained on without a word), and it warns of
// each class the split has no image of (warn_of_empty_classes). `warn` false keeps every such
// warning, and the folder's (ImageFolder), to itself.
std::unique_ptr<ImageSource> open_dataset_split(const std::string& root, const std::string& split,
                                                bool warn = true);

// A warning ("" for none) when `source` is a shard whose images `deit pack` shrank to a shorter
// side below the `needed` pixels that `use` ("training at 224 needs", "evaluation at 224 resizes
// to") scales them to: each is then enlarged from fewer pixels than it is shown with (a shard
// packed for 160-pixel training, fine-tuned at 224). An image folder keeps its files' sizes, and
// so does a shard of images all smaller than its --short-side.
std::string packed_below(const ImageSource& source, int64_t needed, const std::string& use);

// How many images of each class `source` holds, by label.
std::vector<size_t> images_per_class(const ImageSource& source);

// Warns on stderr, naming `where`, of each class of `class_names` that `images_per_class` (by
// label) gives no image: such a class keeps its label (labels must agree between splits), so
// nothing else would say that a model cannot learn it or be scored on it. `why` ends the line.
void warn_of_empty_classes(const std::vector<std::string>& class_names,
                           const std::vector<size_t>& images_per_class, const std::string& where,
                           const std::string& why);

// How two lists of class names differ, each side named by where it is: "10 classes in the
// checkpoint, 9 in the dataset" or "class 3 is 'star' in the checkpoint, 'triangle' in the
// dataset", then the names each side lacks (the first few): "; only in the checkpoint: 'star'".
// Where names are missing on both sides, a name with bytes outside printable ASCII is also shown
// escaped, so that look-alikes (NFC 'café' and NFD 'cafe\u0301') can be told apart. Empty when
// they agree, or when `a` is empty (a file that does not say).
std::string class_difference(const std::vector<std::string>& a, const std::string& a_where,
                             const std::vector<std::string>& b, const std::string& b_where);
// The names of `names` that `other` lacks, in order.
std::vector<std::string> names_missing_from(const std::vector<std::string>& names,
                                            const std::vector<std::string>& other);

// Whether `path` (which need not exist yet) is `folder` or lies inside it, links resolved: a file
// written there would be read as part of the folder's images (false when `folder` does not exist).
bool lies_within(const std::string& path, const std::string& folder);

// The split of dataset `root` ("train" or "val") that `path` lies within, or nullptr: what a run's
// folder or a written image must stay out of, lest it be read as images of the dataset.
const char* split_holding(const std::string& path, const std::string& root);

// `text` with each byte outside printable ASCII shown as \xNN.
std::string escaped_bytes(const std::string& text);

// "" when `text` is well-formed UTF-8 (as nlohmann::json checks what it writes: checkpoints and
// JSON output hold class names and paths as text); otherwise `text` with each byte outside
// printable ASCII shown as \xNN, for the message that refuses it.
std::string shown_if_not_utf8(const std::string& text);

// Throws DataError unless `name` is well-formed UTF-8 (as nlohmann::json checks it): class names
// are written into checkpoints and JSON output as text, so a folder named in another encoding is
// refused when the dataset opens rather than when the first checkpoint is written. `where` names
// its source.
void require_utf8_class_name(const std::string& name, const std::string& where);

// The unusable images met during a run: each one is warned about (on stderr) the first time it is
// seen and counted once, however many epochs meet it again, for the run's summary. Thread-safe.
class SkippedImages {
 public:
  // `what` identifies the image (ImageSource::describe), `message` says what is wrong with it (a
  // DataError's text, which names the file); `label`, its class, and `index`, its index in its
  // source, where known.
  void record(const std::string& what, const std::string& message, int label = -1,
              int64_t index = -1);
  size_t count() const;
  // The images of class `label` recorded.
  size_t count_in_class(int label) const;
  // The source indices of the images recorded with one.
  std::vector<int64_t> indices() const;

 private:
  mutable std::mutex mutex_;
  std::set<std::string> seen_;
  std::map<int, size_t> per_class_;
  std::vector<int64_t> indices_;
};

}  // namespace deit::data
