// Packed shard files: the checksum, a write/read round trip, `deit pack`'s folder packing, and the
// detection of corrupt and truncated files with the record to blame; and what writing them rests
// on: a file written whole or not at all (PendingFile), a folder made for it (MadeFolder).
#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstring>
#include <filesystem>
#include <string>

#include "data/image_folder.h"
#include "data/made_folder.h"
#include "data/pack.h"
#include "data/pending_file.h"
#include "data/prefetch.h"
#include "data/shard.h"
#include "data/synthetic.h"
#include "data/xxhash64.h"
#include "tests/test_data_helpers.h"
#include "tests/test_io_helpers.h"

namespace {

using namespace deit::data;
using Catch::Matchers::Contains;
using deit::test::gradient_image;
using deit::test::read_bytes;
using deit::test::TempDir;
using deit::test::write_bytes;

const std::vector<std::string> kClasses = {"cat", "dog", "emu"};

// Four records of different shapes; record i has label i % 3.
std::vector<ImageU8> write_test_shard(const std::string& path) {
  std::vector<ImageU8> images = {gradient_image(5, 7, 1), gradient_image(16, 9, 2),
                                 gradient_image(1, 1, 3), gradient_image(30, 20, 4)};
  ShardWriter writer(path, kClasses, images.size() + 2, 256);
  for (size_t i = 0; i < images.size(); ++i) writer.add(images[i], static_cast<int>(i % 3));
  writer.finish();
  return images;
}

uint64_t record_offset(const std::vector<uint8_t>& file, size_t record) {
  ShardHeader header;
  std::memcpy(&header, file.data(), sizeof header);
  ShardIndexEntry entry;
  std::memcpy(&entry, file.data() + header.index_offset + record * sizeof entry, sizeof entry);
  return entry.offset;
}

// Writes `header` over the start of `bytes` with its checksums made to match the tables and the
// header as they now are: damage that no checksum catches (a file made to pass them).
void reseal(std::vector<uint8_t>& bytes, ShardHeader header) {
  const uint8_t* class_table = bytes.data() + sizeof header;
  header.tables_checksum =
      xxhash64(bytes.data() + header.index_offset, header.record_count * sizeof(ShardIndexEntry),
               xxhash64(class_table, header.index_offset - sizeof header));
  header.header_checksum = xxhash64(&header, offsetof(ShardHeader, header_checksum));
  std::memcpy(bytes.data(), &header, sizeof header);
}

}  // namespace

TEST_CASE("xxhash64 matches the reference vectors", "[data]") {
  CHECK(xxhash64("", 0) == 0xEF46DB3751D8E999ull);
  CHECK(xxhash64("", 0, 1) == 0xD5AFBA1336A3BE4Bull);
  CHECK(xxhash64("a", 1) == 0xD24EC4F1A98C6E5Bull);
  CHECK(xxhash64("abc", 3) == 0x44BC2CF5AD770999ull);
  const char* text = "Nobody inspects the spammish repetition";  // 39 bytes: one 32-byte stripe
  CHECK(xxhash64(text, std::strlen(text)) == 0xFBCEA83C8A378BF1ull);
}

TEST_CASE("A shard returns the images, labels and classes it was written with", "[data]") {
  TempDir dir;
  const std::string path = dir.file("train.shard");
  const std::vector<ImageU8> images = write_test_shard(path);

  CHECK_FALSE(std::filesystem::exists(ShardWriter::partial_path(path)));
  REQUIRE(is_shard_file(path));
  const ShardReader reader(path);
  CHECK(reader.class_names() == kClasses);
  CHECK(reader.short_side() == 256);
  CHECK(reader.largest_short_side() == 20);  // the 30 x 20 image's
  REQUIRE(reader.size() == images.size());
  for (size_t i = 0; i < images.size(); ++i) {
    const ImageU8 loaded = reader.load(i);
    CHECK(loaded.height == images[i].height);
    CHECK(loaded.width == images[i].width);
    CHECK(loaded.pixels == images[i].pixels);
    CHECK(reader.label(i) == static_cast<int>(i % 3));
  }
  CHECK(reader.describe(3) == path + " record 3");
  // open_image_source recognises the file by its magic, whatever its name.
  CHECK(open_image_source(path)->size() == images.size());
}

TEST_CASE("A corrupted record is reported with the file and the record number", "[data]") {
  TempDir dir;
  const std::string path = dir.file("train.shard");
  write_test_shard(path);
  std::vector<uint8_t> bytes = read_bytes(path);
  bytes[record_offset(bytes, 1) + 17] ^= 0x01;  // one bit of record 1's pixels
  write_bytes(path, bytes);

  const ShardReader reader(path);  // the header and index are intact
  CHECK_NOTHROW(reader.load(0));
  CHECK_THROWS_WITH(reader.load(1), Contains(path + " record 1") && Contains("checksum"));
  CHECK_NOTHROW(reader.load(2));
}

TEST_CASE("A truncated shard is reported with the first record cut off", "[data]") {
  TempDir dir;
  const std::string path = dir.file("train.shard");
  write_test_shard(path);
  std::vector<uint8_t> bytes = read_bytes(path);

  SECTION("inside a record") {
    bytes.resize(record_offset(bytes, 3) + 10);
    write_bytes(path, bytes);
    CHECK_THROWS_WITH(ShardReader(path),
                      Contains(path) && Contains("truncated") && Contains("record 3 of 4"));
  }
  SECTION("while a reader has it open") {
    // As when a shard is copied over or truncated during a run: the records still there load,
    // the ones cut off are reported (a memory mapping would have ended the process with SIGBUS).
    const ShardReader reader(path);
    std::filesystem::resize_file(path, record_offset(bytes, 3) + 10);
    CHECK(reader.load(1).pixels.size() == 16 * 9 * 3);
    CHECK(reader.load(2).pixels.size() == 3);
    CHECK_THROWS_WITH(reader.load(3), Contains(path + " record 3: the file ends before it"));
  }
  SECTION("inside the index") {
    bytes.resize(sizeof(ShardHeader) + 20);
    write_bytes(path, bytes);
    CHECK_THROWS_WITH(ShardReader(path), Contains(path) && Contains("truncated"));
  }
  SECTION("inside the header") {
    bytes.resize(30);
    write_bytes(path, bytes);
    CHECK_THROWS_WITH(ShardReader(path), Contains(path) && Contains("too short"));
  }
  SECTION("to zero bytes") {
    bytes.clear();
    write_bytes(path, bytes);
    CHECK_THROWS_WITH(ShardReader(path), Contains(path) && Contains("too short"));
  }
}

TEST_CASE("A damaged header, index or foreign file is refused when the shard opens", "[data]") {
  TempDir dir;
  const std::string path = dir.file("train.shard");
  write_test_shard(path);
  std::vector<uint8_t> bytes = read_bytes(path);
  ShardHeader header;
  std::memcpy(&header, bytes.data(), sizeof header);

  SECTION("header") {
    bytes[offsetof(ShardHeader, record_count)] ^= 0x02;
    write_bytes(path, bytes);
    CHECK_THROWS_WITH(ShardReader(path), Contains(path) && Contains("corrupt header"));
  }
  SECTION("index") {
    bytes[header.index_offset + sizeof(ShardIndexEntry) + 8] ^= 0x01;  // record 1's height
    write_bytes(path, bytes);
    CHECK_THROWS_WITH(ShardReader(path),
                      Contains(path) && Contains("corrupt class table or index"));
  }
  SECTION("an index capacity whose byte count overflows to the real one, checksums intact") {
    header.index_capacity += uint64_t{1} << 59;  // times 32 bytes: 2^64 more, wrapped away
    reseal(bytes, header);
    write_bytes(path, bytes);
    CHECK_THROWS_WITH(ShardReader(path), Contains(path) && Contains("inconsistent offsets"));
  }
  SECTION("record sizes whose byte count overflows to a few bytes, checksums intact") {
    ShardIndexEntry entry;
    const size_t at = header.index_offset;  // record 0's entry
    std::memcpy(&entry, bytes.data() + at, sizeof entry);
    entry.height = 2007567422;  // x 3062868337 x 3 = 2^64 + 26
    entry.width = 3062868337;
    entry.checksum = xxhash64(bytes.data() + entry.offset, 26);
    std::memcpy(bytes.data() + at, &entry, sizeof entry);
    reseal(bytes, header);
    write_bytes(path, bytes);
    CHECK_THROWS_WITH(ShardReader(path), Contains(path + " record 0: corrupt index entry"));
  }
  SECTION("header offsets out of order or past the file, its checksum intact") {
    // The header is checked before the tables: only its own checksum needs making to match.
    ShardHeader damaged = header;
    const int which = GENERATE(range(0, 4));
    if (which == 0) damaged.index_offset = sizeof header - 8;        // inside the header
    if (which == 1) damaged.index_offset = header.data_offset + 64;  // after the records' start
    if (which == 2) damaged.data_offset = header.file_bytes + 64;    // past the file's end
    if (which == 3) damaged.record_count = header.index_capacity + 1;
    INFO("damage " << which);
    damaged.header_checksum = xxhash64(&damaged, offsetof(ShardHeader, header_checksum));
    std::memcpy(bytes.data(), &damaged, sizeof damaged);
    write_bytes(path, bytes);
    CHECK_THROWS_WITH(ShardReader(path), Contains(path) && Contains("inconsistent offsets"));
  }
  SECTION("a file cut inside its index") {
    bytes.resize(header.data_offset - 10);
    write_bytes(path, bytes);
    CHECK_THROWS_WITH(ShardReader(path), Contains(path) && Contains("truncated inside its index") &&
                                             Contains("the header says"));
  }
  SECTION("an index entry no writer makes, checksums intact") {
    ShardIndexEntry entry;
    const size_t at = header.index_offset;  // record 0's entry: 5 x 7 at a 64-byte boundary
    std::memcpy(&entry, bytes.data() + at, sizeof entry);
    const int which = GENERATE(range(0, 4));
    if (which == 0) entry.height = 0;
    if (which == 1) entry.offset += 1;                 // off the record alignment
    if (which == 2) entry.offset = ~uint64_t{0} - 63;  // its end wraps past 2^64
    if (which == 3) entry.label = static_cast<int32_t>(kClasses.size());  // one past the last
    INFO("damage " << which);
    std::memcpy(bytes.data() + at, &entry, sizeof entry);
    reseal(bytes, header);
    write_bytes(path, bytes);
    CHECK_THROWS_WITH(ShardReader(path), Contains(path + " record 0: corrupt index entry"));
  }
  SECTION("a class table that disagrees with the header, checksums intact") {
    SECTION("more classes in the header") {
      header.num_classes += 1;
      reseal(bytes, header);
      write_bytes(path, bytes);
      CHECK_THROWS_WITH(ShardReader(path), Contains("3 names for 4 classes"));
    }
    SECTION("the last name one byte longer than the table") {
      // "cat", "dog", "emu", each after its 4-byte length: emu's length is at byte 14.
      bytes[sizeof header + 14] = 4;
      reseal(bytes, header);
      write_bytes(path, bytes);
      CHECK_THROWS_WITH(ShardReader(path), Contains("a name runs past its end"));
    }
  }
  SECTION("trailing bytes") {
    bytes.resize(bytes.size() + 100, 0);
    write_bytes(path, bytes);
    CHECK_THROWS_WITH(ShardReader(path), Contains(path) && Contains("header says"));
  }
  SECTION("another format") {
    std::memcpy(bytes.data(), "GARBAGE!", 8);
    write_bytes(path, bytes);
    CHECK_FALSE(is_shard_file(path));
    CHECK_THROWS_WITH(ShardReader(path), Contains(path) && Contains("not a deit shard"));
    CHECK_THROWS_WITH(open_image_source(path), Contains(path) && Contains("neither"));
  }
  SECTION("a named pipe, which opening would wait on for a writer") {
    std::filesystem::remove(path);
    REQUIRE(mkfifo(path.c_str(), 0600) == 0);
    CHECK_FALSE(is_shard_file(path));
    CHECK_THROWS_WITH(ShardReader(path), Contains(path) && Contains("not a regular file"));
    CHECK_THROWS_WITH(open_image_source(path), Contains(path) && Contains("neither"));
  }
  SECTION("a newer version") {
    header.version = kShardVersion + 1;
    std::memcpy(bytes.data(), &header, sizeof header);
    write_bytes(path, bytes);
    CHECK_THROWS_WITH(ShardReader(path), Contains(path) && Contains("version"));
  }
}

TEST_CASE("A shard whose class names are not UTF-8 is refused when it opens", "[data]") {
  TempDir dir;
  const std::string path = dir.file("latin1.shard");
  ShardWriter writer(path, {"d\xe9sc", "ring"}, 1, 256);
  writer.add(gradient_image(4, 4), 0);
  writer.finish();
  CHECK_THROWS_WITH(ShardReader(path), Contains(path) && Contains("'d\\xe9sc' is not UTF-8"));
}

TEST_CASE("An unfinished shard leaves no file behind", "[data]") {
  TempDir dir;
  const std::string path = dir.file("train.shard");
  {
    ShardWriter writer(path, kClasses, 4, 0);
    writer.add(gradient_image(3, 3), 0);
    CHECK_THROWS_WITH(writer.add(gradient_image(3, 3), 7), Contains("label 7"));
    for (int i = 0; i < 3; ++i) writer.add(gradient_image(3, 3), 1);
    CHECK_THROWS_WITH(writer.add(gradient_image(3, 3), 1),
                      Contains(path + ": more records than the 4 reserved"));
  }
  CHECK_FALSE(std::filesystem::exists(path));
  CHECK_FALSE(std::filesystem::exists(ShardWriter::partial_path(path)));

  // A disk that fills up part-way: the write fails naming the shard, and nothing is left.
  {
    ShardWriter writer(path, kClasses, 4, 0);
    const deit::test::FileSizeLimit full_disk(64 << 10);
    const auto write_and_finish = [&] {
      writer.add(gradient_image(200, 200), 0);
      writer.finish();
    };
    CHECK_THROWS_WITH(write_and_finish(), Contains("cannot write '" + path + "'"));
  }
  CHECK_FALSE(std::filesystem::exists(path));
  CHECK_FALSE(std::filesystem::exists(ShardWriter::partial_path(path)));
}

TEST_CASE("A shard of no records is as long as its header says", "[data]") {
  TempDir dir;
  const std::string path = dir.file("empty.shard");
  ShardWriter writer(path, kClasses, 3, 0);
  const uint64_t bytes = writer.finish();
  CHECK(std::filesystem::file_size(path) == bytes);
  const ShardReader reader(path);
  CHECK(reader.size() == 0);
  CHECK(reader.class_names() == kClasses);
}

TEST_CASE("pack_image_folder shrinks, packs in folder order and skips bad files", "[data]") {
  TempDir dir;
  const std::string src = dir.path() + "/train";
  const ImageU8 big = gradient_image(60, 100, 1);
  const ImageU8 small = gradient_image(20, 24, 2);
  write_png(dir.file("train/a/big.png"), big);
  write_png(dir.file("train/a/small.png"), small);
  write_bytes(dir.file("train/b/empty.jpg"), {});
  write_bytes(dir.file("train/b/garbage.png"), std::vector<uint8_t>(64, 7));
  write_png(dir.file("train/b/ok.png"), small);

  const std::string out = dir.file("train.shard");
  uint64_t last_done = 0, last_total = 0;
  const PackSummary summary =
      pack_image_folder(src, out, PackOptions{32, 2}, [&](uint64_t done, uint64_t total) {
        last_done = done;
        last_total = total;
      });
  CHECK(summary.images == 3);
  CHECK(summary.skipped == 2);
  CHECK(summary.bytes == std::filesystem::file_size(out));
  CHECK(last_done == 5);
  CHECK(last_total == 5);

  const ShardReader reader(out);
  REQUIRE(reader.size() == 3);
  CHECK(reader.class_names() == std::vector<std::string>{"a", "b"});
  const ImageU8 shrunk = reader.load(0);
  CHECK(shrunk.height == 32);  // torchvision Resize(32): the long side is int(32 * 100 / 60)
  CHECK(shrunk.width == 53);
  CHECK(reader.load(1).pixels == small.pixels);  // shorter side 20 <= 32: stored as it is
  CHECK(reader.label(2) == 1);
  CHECK(reader.load(2).pixels == small.pixels);
}

TEST_CASE("pack_image_folder shrinks by the shorter side alone, into a folder it makes", "[data]") {
  // A long strip whose shorter side is within --short-side is stored as it is, however long;
  // enlarging its shorter side would only cost space. The shard's folder does not exist yet.
  TempDir dir;
  const ImageU8 strip = gradient_image(20, 100, 3);
  write_png(dir.file("train/a/strip.png"), strip);
  const std::string out = dir.path() + "/packed/small/train.shard";
  pack_image_folder(dir.path() + "/train", out, PackOptions{32, 1});
  const ShardReader reader(out);
  REQUIRE(reader.size() == 1);
  CHECK(reader.load(0).pixels == strip.pixels);
  CHECK(reader.load(0).height == 20);
}

TEST_CASE("Packing replaces an earlier shard and nothing else", "[data]") {
  TempDir dir;
  const std::string src = dir.path() + "/train";
  write_png(dir.file("train/a/x.png"), gradient_image(8, 8, 1));
  const std::string shard = dir.file("train.shard");
  pack_image_folder(src, shard, PackOptions{0, 1});
  CHECK(pack_image_folder(src, shard, PackOptions{0, 1}).images == 1);  // packed again

  // Another file, a folder, a link (even to a shard), a pipe; an image of the folder itself.
  const std::string notes = dir.file("notes.txt");
  write_bytes(notes, {'k', 'e', 'e', 'p'});
  const std::string folder = dir.path() + "/folder";
  std::filesystem::create_directories(folder);
  const std::string link = dir.path() + "/link.shard";
  std::filesystem::create_symlink(shard, link);
  const std::string pipe = dir.path() + "/pipe";
  REQUIRE(mkfifo(pipe.c_str(), 0600) == 0);
  for (const std::string& out : {notes, folder, link, pipe}) {
    INFO(out);
    CHECK_THROWS_WITH(pack_image_folder(src, out, PackOptions{0, 1}),
                      Contains(out + ": exists and is not"));
  }
  CHECK(read_bytes(notes) == std::vector<uint8_t>{'k', 'e', 'e', 'p'});
  CHECK(std::filesystem::is_symlink(link));
  CHECK(std::filesystem::is_fifo(pipe));
  const std::vector<uint8_t> image = read_bytes(src + "/a/x.png");
  CHECK_THROWS_WITH(pack_image_folder(src, src + "/a/x.png", PackOptions{0, 1}),
                    Contains("lies inside the folder being packed"));
  CHECK_THROWS_WITH(pack_image_folder(src, src + "/new.shard", PackOptions{0, 1}),
                    Contains("lies inside the folder being packed"));
  CHECK(read_bytes(src + "/a/x.png") == image);
}

TEST_CASE("pack_image_folder refuses a folder whose images are all unusable", "[data]") {
  TempDir dir;
  write_bytes(dir.file("train/a/empty.png"), {});
  const std::string out = dir.path() + "/train.shard";
  CHECK_THROWS_WITH(pack_image_folder(dir.path() + "/train", out, PackOptions{}),
                    Contains(dir.path() + "/train: none of its 1 image files"));
  CHECK_FALSE(std::filesystem::exists(out));
  CHECK_FALSE(std::filesystem::exists(ShardWriter::partial_path(out)));
}

TEST_CASE("A shard packed at full size feeds the loader what its folder does", "[data]") {
  TempDir dir;
  SyntheticOptions synthetic;
  synthetic.image_size = 16;
  synthetic.train_per_class = 3;
  synthetic.val_per_class = 1;
  generate_synthetic_dataset(dir.path() + "/synthetic", synthetic);
  const std::string folder_path = dir.path() + "/synthetic/train";
  pack_image_folder(folder_path, dir.path() + "/synthetic/train.shard", PackOptions{0, 1});

  auto run = [](std::shared_ptr<const ImageSource> source) {
    PrefetchOptions options;
    options.batch_size = 4;
    options.sample_elements = 16 * 16 * 3;
    options.format = PixelFormat::kUint8;
    SamplerOptions sampling;
    sampling.dataset_size = source->size();
    PrefetchLoader loader(source, Sampler(sampling), options,
                          [](const ImageU8& image, deit::Rng&, SampleOutput out) {
                            std::copy(image.pixels.begin(), image.pixels.end(), out.u8);
                          });
    loader.start_epoch(0);
    std::vector<uint8_t> pixels;
    std::vector<int32_t> labels;
    while (const Batch* batch = loader.next_batch()) {
      pixels.insert(pixels.end(), batch->u8.begin(), batch->u8.end());
      labels.insert(labels.end(), batch->labels.begin(), batch->labels.end());
    }
    return std::make_pair(pixels, labels);
  };
  const auto from_folder = run(std::make_shared<ImageFolder>(folder_path));
  const auto from_shard = run(open_dataset_split(dir.path() + "/synthetic", "train"));
  CHECK(from_folder.first.size() == 28 * 16 * 16 * 3);  // 30 images, drop_last batches of 4
  CHECK(from_shard == from_folder);
}

TEST_CASE("A listing's fingerprint tells which image each index holds, wherever the root lies",
          "[data]") {
  TempDir dir;
  write_png(dir.file("one/train/a/x.png"), gradient_image(8, 8, 1));
  write_png(dir.file("one/train/a/y.png"), gradient_image(8, 8, 2));
  write_png(dir.file("one/train/b/z.png"), gradient_image(8, 8, 3));
  std::filesystem::copy(dir.file("one"), dir.file("two"), std::filesystem::copy_options::recursive);
  const std::string folder = ImageFolder(dir.file("one/train")).listing_fingerprint();
  CHECK_THAT(folder, Catch::Matches("folder:[0-9a-f]{16}"));
  // Moved elsewhere, or named with a trailing slash: the same listing.
  CHECK(ImageFolder(dir.file("two/train")).listing_fingerprint() == folder);
  CHECK(ImageFolder(dir.file("two/train/")).listing_fingerprint() == folder);
  // As many images, one of them under another name, or in another class: another listing.
  std::filesystem::rename(dir.file("two/train/a/y.png"), dir.file("two/train/a/w.png"));
  CHECK(ImageFolder(dir.file("two/train")).listing_fingerprint() != folder);
  std::filesystem::rename(dir.file("two/train/a/w.png"), dir.file("two/train/b/y.png"));
  CHECK(ImageFolder(dir.file("two/train")).listing_fingerprint() != folder);
  // The same files under labels shifted by one, by a class folder without images sorted first.
  std::filesystem::create_directory(dir.file("one/train/0"));
  CHECK(ImageFolder(dir.file("one/train")).listing_fingerprint() != folder);
  std::filesystem::remove(dir.file("one/train/0"));

  // A shard's says it by content: two packs of one folder agree, another image does not.
  pack_image_folder(dir.file("one/train"), dir.file("one.shard"), PackOptions{0, 1});
  pack_image_folder(dir.file("one/train"), dir.file("again.shard"), PackOptions{0, 2});
  const std::string shard = ShardReader(dir.file("one.shard")).listing_fingerprint();
  CHECK_THAT(shard, Catch::Matches("shard:[0-9a-f]{16}"));
  CHECK(ShardReader(dir.file("again.shard")).listing_fingerprint() == shard);
  write_png(dir.file("one/train/a/y.png"), gradient_image(8, 8, 4));
  pack_image_folder(dir.file("one/train"), dir.file("other.shard"), PackOptions{0, 1});
  CHECK(ShardReader(dir.file("other.shard")).listing_fingerprint() != shard);
  // The same pixels under another label.
  for (const int label : {0, 1}) {
    ShardWriter writer(dir.file("label.shard"), {"a", "b"}, 1, 0);
    writer.add(gradient_image(8, 8, 1), label);
    writer.finish();
    const std::string fingerprint = ShardReader(dir.file("label.shard")).listing_fingerprint();
    if (label == 0)
      std::filesystem::rename(dir.file("label.shard"), dir.file("label0.shard"));
    else
      CHECK(fingerprint != ShardReader(dir.file("label0.shard")).listing_fingerprint());
  }
}

TEST_CASE("A shard file given where the dataset's folder belongs is named as such", "[data]") {
  TempDir dir;
  const std::string shard = dir.path() + "/train.shard";
  {
    ShardWriter writer(shard, {"a"}, 1, 0);
    writer.add(gradient_image(8, 8), 0);
    writer.finish();
  }
  CHECK_THROWS_WITH(open_dataset_split(shard, "train"),
                    Contains("a file, where the dataset's folder is asked for: give the folder "
                             "that holds train.shard or train/"));
  CHECK_THROWS_WITH(open_dataset_split(dir.path() + "/none", "val"), Contains("has neither"));
}

TEST_CASE("A pending file appears whole at commit, and one that fails leaves nothing", "[data]") {
  TempDir dir;
  const std::string target = dir.file("out.bin");
  const std::string temp = PendingFile::temp_path(target, "partial");
  CHECK(temp == target + ".partial." + std::to_string(getpid()));
  const auto open_files = [] {
    return std::distance(std::filesystem::directory_iterator("/proc/self/fd"), {});
  };
  const auto files_before = open_files();
  {
    PendingFile file(target, "partial");
    file.open();
    file.write("abcdef", 6);
    file.write_at(1, "XY", 2);  // a header patched in place, as a shard's
    file.write("!", 1);         // goes to the end again
    CHECK(std::filesystem::exists(temp));
    CHECK_FALSE(std::filesystem::exists(target));
    file.commit(false);
  }
  CHECK(read_bytes(target) == std::vector<uint8_t>{'a', 'X', 'Y', 'd', 'e', 'f', '!'});
  CHECK_FALSE(std::filesystem::exists(temp));
  {
    PendingFile abandoned(target);  // an exception between open() and commit()
    abandoned.open();
    abandoned.write("zz", 2);
  }
  // A full disk that shows only at the flush: the write is what failed, and nothing is left.
  {
    PendingFile file(target);
    file.open();
    file.write(std::string(3000, 'x').data(), 3000);  // within stdio's buffer
    const deit::test::FileSizeLimit full_disk(1024);
    CHECK_THROWS_WITH(file.commit(false), Contains("cannot write '" + target + "': writing '" +
                                                   PendingFile::temp_path(target) + "' failed"));
  }
  CHECK(std::distance(std::filesystem::directory_iterator(dir.path()), {}) == 1);  // the target
  CHECK(read_bytes(target).size() == 7);
  CHECK(open_files() == files_before);  // each temporary file closed
  // A folder in the target's place: the rename fails, and is said to.
  const std::string folder = dir.file("folder/inside");
  write_bytes(folder, {1});
  {
    PendingFile file(dir.path() + "/folder");
    file.open();
    CHECK_THROWS_WITH(file.commit(false), Contains("renaming '"));
  }
  CHECK(std::distance(std::filesystem::directory_iterator(dir.path()), {}) == 2);
}

TEST_CASE("A made folder is kept, or removed as far as it was made when an exception unwinds",
          "[data]") {
  TempDir dir;
  const std::string there = dir.path() + "/there";  // empty, but not made by the MadeFolder
  std::filesystem::create_directories(there);
  CHECK(MadeFolder("").made().empty());  // the current folder
  {
    const MadeFolder made(there + "/a/b/");  // a trailing separator: the same folder
    CHECK(made.made() == std::vector<std::string>{there + "/a/b", there + "/a"});
  }
  CHECK(std::filesystem::is_directory(there + "/a/b"));  // no exception: kept, even empty
  std::filesystem::remove_all(there + "/a");
  const auto fail_within = [](const std::string& folder) {
    try {
      const MadeFolder made(folder);
      throw std::runtime_error("the command failed");
    } catch (const std::runtime_error&) {
    }
  };
  fail_within(there + "/a/b");
  CHECK_FALSE(std::filesystem::exists(there + "/a"));
  CHECK(std::filesystem::is_directory(there));
  fail_within(there);  // there already: neither made nor removed
  CHECK(std::filesystem::is_directory(there));
  // A file in the way, however far above the folder, is named (also where deit train --dry-run
  // checks its --output without making it).
  const std::string file = dir.file("file");
  write_bytes(file, {1});
  CHECK_THROWS_WITH(refuse_file_in_the_way(file + "/a/b"),
                    Contains("'" + file + "' is a file, not a folder"));
  CHECK_NOTHROW(refuse_file_in_the_way(there + "/c/d"));
  // A folder that cannot be made is said so, whatever the reason.
  const std::string too_long = there + "/" + std::string(300, 'x');
  CHECK_THROWS_WITH(MadeFolder(too_long),
                    Contains("cannot create the folder '" + too_long + "': File name too long"));
}
