// Safetensors files and the deit metadata in them (model/safetensors.cpp, model/checkpoint.cpp):
// any bytes give tensors or an error naming the file (std::runtime_error), never another exception
// (a JSON library's type error, say, that says nothing of the file) and nothing out of bounds.
// Inputs without the deit_crc32 metadata (timm's files have none) reach the checks behind it.
#include <cstddef>
#include <cstdint>
#include <stdexcept>

#include "model/checkpoint.h"
#include "model/safetensors.h"
#include "tests/fuzz/memory_file.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = deit::fuzz::as_file(data, size);
  try {
    (void)deit::model::read_safetensors(path);
  } catch (const std::runtime_error&) {
  }
  try {
    (void)deit::model::read_model_config(path);
    (void)deit::model::read_class_names(path);
  } catch (const std::runtime_error&) {
  }
  try {
    (void)deit::model::read_checkpoint_header(path);
  } catch (const std::runtime_error&) {
  }
  return 0;
}
