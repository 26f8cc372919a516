// Tensor basics, the caching allocator and Rng.
#include <unistd.h>
#include <catch2/catch.hpp>

#include <array>
#include <cmath>
#include <fstream>
#include <optional>
#include <vector>

#include "engine/allocator.h"
#include "engine/ops/layerscale.h"
#include "engine/rng.h"
#include "engine/staged_upload.h"
#include "engine/tensor.h"

using namespace deit;

TEST_CASE("tensors of every dtype are created, filled and read back", "[tensor]") {
  for (DType dt : {DType::f32, DType::f64, DType::bf16, DType::u8, DType::i32}) {
    INFO(dtype_name(dt));
    Tensor t = Tensor::full({2, 3, 4}, 3.0, dt);
    CHECK(t.numel() == 24);
    CHECK(t.nbytes() == 24 * dtype_size(dt));
    CHECK(t.dim() == 3);
    CHECK(t.size(-1) == 4);
    CHECK(t.size(-3) == 2);
    CHECK_THROWS_AS(t.size(3), std::out_of_range);
    // Named as asked: counted from the end, -4 said "dimension -1".
    CHECK_THROWS_WITH(t.size(-4), "dimension -4 of a 3-d tensor");
    for (double v : t.to_vector<double>()) CHECK(v == 3.0);
  }
  // item() is for one-element tensors: of two, or of none, there is no one element to give.
  CHECK_THROWS_AS(Tensor::zeros({2}).item(), std::invalid_argument);
  CHECK_THROWS_AS(Tensor::zeros({0}).item(), std::invalid_argument);
}

TEST_CASE("an integer tensor is filled only with a value it holds", "[tensor]") {
  // The cast from double of any of these is undefined behaviour, not a wrap or a rounding.
  for (double bad : {256.0, -1.0, 0.5, std::nan("")})
    CHECK_THROWS_WITH(Tensor::full({2}, bad, DType::u8), Catch::Contains("is not a value of u8"));
  for (double bad : {2147483648.0, -2147483649.0, 1.5, HUGE_VAL})
    CHECK_THROWS_WITH(Tensor::zeros({2}, DType::i32).fill_(bad),
                      Catch::Contains("is not a value of i32"));
  CHECK(Tensor::full({2}, 255.0, DType::u8).to_vector<int32_t>() == std::vector<int32_t>{255, 255});
  CHECK(Tensor::full({1}, -2147483648.0, DType::i32).to_vector<int32_t>()[0] == INT32_MIN);
  CHECK(Tensor::full({1}, 0.5, DType::f32).item() == 0.5);
  // The value is checked before the (absent) elements are: a fill that is wrong is wrong always.
  CHECK_THROWS_WITH(Tensor::empty({0}, DType::u8).fill_(256.0),
                    Catch::Contains("is not a value of u8"));
}

TEST_CASE("a tensor too large to count in bytes is refused, not allocated wrapped", "[tensor]") {
  // 2^62 f32 elements are 2^64 bytes, which a 64-bit count wraps to 0.
  CHECK_THROWS_AS(Tensor::empty({int64_t{1} << 62}, DType::f32), deit::OutOfMemory);
  CHECK_THROWS_WITH(Tensor::empty({int64_t{1} << 31, int64_t{1} << 31, 3}, DType::bf16),
                    Catch::Contains("cannot make a tensor of shape (2147483648, 2147483648, 3)"));
  CHECK(Tensor::empty({int64_t{1} << 62, 0, int64_t{1} << 62}, DType::f32).numel() == 0);
}

TEST_CASE("an element count past int64 or a negative dimension is refused, naming the shape",
          "[tensor]") {
  // 2^32 * 2^32 wraps to 0 in int64: a buffer sized from it would be empty.
  CHECK_THROWS_WITH(shape_numel({int64_t{1} << 32, int64_t{1} << 32}),
                    Catch::Contains("shape (4294967296, 4294967296)"));
  CHECK_THROWS_AS(shape_numel({int64_t{1} << 62, 2}), std::invalid_argument);  // 2^63
  CHECK_THROWS_WITH(shape_numel({2, -3}), Catch::Contains("negative dimension in shape (2, -3)"));
  // A dimension of 0 holds no elements however large the others are, as Tensor::empty counts.
  CHECK(shape_numel({int64_t{1} << 62, int64_t{1} << 62, 0}) == 0);
  CHECK(shape_numel({INT64_MAX, 1}) == INT64_MAX);
  CHECK(shape_numel({}) == 1);
}

TEST_CASE("dtype conversions round trip and round bf16 to nearest even", "[tensor]") {
  Tensor f = Tensor::from_vector<float>({1.0f, -2.5f, 1.00390625f, 1.01171875f, 3.14159265f}, {5});
  Tensor h = f.to(DType::bf16);
  const std::vector<float> back = h.to(DType::f32).to_vector<float>();
  CHECK(back[0] == 1.0f);
  CHECK(back[1] == -2.5f);
  CHECK(back[2] == 1.0f);          // 1 + 2^-8 is a tie: rounds to the even neighbour, 1
  CHECK(back[3] == 1.015625f);     // 1 + 3 * 2^-8 is a tie: rounds up to the even 1 + 2^-6
  CHECK(std::abs(back[4] - 3.14159265f) < 3.14159265f / 128);
  Tensor d = f.to(DType::f64);
  CHECK(d.to_vector<double>()[1] == -2.5);
  CHECK(Tensor::from_vector<int32_t>({7, -1}, {2}).to(DType::f32).to_vector<float>()[1] == -1.0f);
  // 2^24 + 1 has no f32: only a conversion that skips f32 keeps it.
  CHECK(Tensor::from_vector<int32_t>({16777217}, {1}).to(DType::f64).item() == 16777217.0);
  CHECK(f.to(DType::f32).same_storage(f));
  CHECK_THROWS_AS(f.to(DType::i32), std::invalid_argument);
  CHECK_THROWS_AS(f.to(DType::u8), std::invalid_argument);
}

TEST_CASE("views share storage, and shape errors are reported", "[tensor]") {
  Tensor t = Tensor::from_vector<float>({0, 1, 2, 3, 4, 5}, {3, 2});
  Tensor v = t.view({2, -1});
  CHECK(v.shape() == Shape{2, 3});
  CHECK(v.same_storage(t));
  Tensor rows = t.slice(1, 3);
  CHECK(rows.shape() == Shape{2, 2});
  CHECK(rows.to_vector<float>() == std::vector<float>{2, 3, 4, 5});
  // A slice of a slice counts from where the first one starts, not from the storage's start.
  CHECK(rows.slice(1, 2).to_vector<float>() == std::vector<float>{4, 5});
  rows.fill_(9);
  CHECK(t.to_vector<float>() == std::vector<float>{0, 1, 9, 9, 9, 9});
  CHECK_THROWS_WITH(t.view({4, 2}), Catch::Contains("(4, 2)"));
  CHECK_THROWS_WITH(t.view({-2, -3}), Catch::Contains("negative"));  // 6 elements, but no shape
  CHECK_THROWS_WITH(t.view({-1, -1}), Catch::Contains("more than one -1"));
  CHECK(Tensor::zeros({0, 4}).view({-1, 4}).shape() == Shape{0, 4});
  CHECK_THROWS_WITH(Tensor::zeros({0, 4}).view({-1, 0}), Catch::Contains("any size"));
  CHECK_THROWS(t.slice(2, 4));
  CHECK_THROWS_AS(t.slice(-1, 1), std::out_of_range);
  CHECK_THROWS_AS(Tensor::zeros({}).slice(0, 0), std::out_of_range);  // no rows to slice
  CHECK(Tensor::zeros({0, 3}).slice(0, 0).shape() == Shape{0, 3});  // no rows: nothing to divide
  CHECK_THROWS_WITH(t.data<double>(), Catch::Contains("f32"));
  CHECK_THROWS_WITH(Tensor::from_vector<float>({1, 2}, {3}), Catch::Contains("(3)"));
}

TEST_CASE("clone copies, copy_from checks shapes", "[tensor]") {
  Rng rng(1);
  Tensor a = Tensor::randn({4, 4}, rng);
  Tensor b = a.clone();
  CHECK_FALSE(b.same_storage(a));
  CHECK(b.to_vector<float>() == a.to_vector<float>());
  CHECK_THROWS(b.copy_from(Tensor::zeros({4})));
  CHECK_THROWS_AS(b.copy_from(Tensor::zeros({4, 4}, DType::f64)), std::invalid_argument);
  CHECK(a.to(Device::cpu()).same_storage(a));  // already there: no copy
}

TEST_CASE("copy_from refuses a source that partly overlaps it, and copying onto itself keeps it",
          "[tensor]") {
  // Rows 0-2 and 1-3 of one tensor share rows 1 and 2: memcpy (and cudaMemcpyAsync) leave such a
  // copy undefined.
  Tensor t = Tensor::from_vector<float>({0, 1, 2, 3, 4, 5, 6, 7}, {4, 2});
  CHECK_THROWS_WITH(t.slice(0, 3).copy_from(t.slice(1, 4)), Catch::Contains("overlaps"));
  CHECK_THROWS_WITH(t.slice(1, 4).copy_from(t.slice(0, 3)), Catch::Contains("clone()"));
  CHECK(t.to_vector<float>() == std::vector<float>{0, 1, 2, 3, 4, 5, 6, 7});
  t.slice(0, 3).copy_from(t.slice(1, 4).clone());  // the way to shift rows
  CHECK(t.to_vector<float>() == std::vector<float>{2, 3, 4, 5, 6, 7, 6, 7});
  t.view({8}).copy_from(t.view({2, 4}).view({8}));  // the same elements: nothing to do
  CHECK(t.to_vector<float>() == std::vector<float>{2, 3, 4, 5, 6, 7, 6, 7});
  t.slice(0, 2).copy_from(t.slice(2, 4));  // views of one storage that do not overlap
  CHECK(t.to_vector<float>() == std::vector<float>{6, 7, 6, 7, 6, 7, 6, 7});
}

TEST_CASE("the caching allocator hands freed blocks out again", "[tensor][allocator]") {
  CachingAllocator& alloc = cpu_allocator();
  alloc.release_cached();
  const AllocatorStats before = alloc.stats();
  void* first = nullptr;
  {
    Tensor t = Tensor::empty({1000, 1000});
    first = t.raw_data();
  }
  const AllocatorStats after_free = alloc.stats();
  CHECK(after_free.system_allocations == before.system_allocations + 1);
  CHECK(after_free.bytes_cached >= 4000000);
  // A "training loop" of the same shapes: the cache serves everything, no new system allocation.
  for (int step = 0; step < 5; ++step) {
    Tensor t = Tensor::empty({1000, 1000});
    CHECK(t.raw_data() == first);
  }
  const AllocatorStats steady = alloc.stats();
  CHECK(steady.system_allocations == after_free.system_allocations);
  CHECK(steady.cache_hits >= after_free.cache_hits + 5);
  // Slightly different sizes share a block too; a much smaller request does not take a big one.
  {
    Tensor t = Tensor::empty({999, 1000});
    CHECK(t.raw_data() == first);
  }
  {
    Tensor small = Tensor::empty({10});
    CHECK(small.raw_data() != first);
  }
  alloc.release_cached();
  CHECK(alloc.stats().bytes_cached == 0);
  // A size the rounding would wrap to a small block is refused.
  const size_t in_use = alloc.stats().bytes_in_use;
  CHECK_THROWS_AS(alloc.allocate(SIZE_MAX), OutOfMemory);
  CHECK_THROWS_AS(alloc.allocate(SIZE_MAX - 100), OutOfMemory);
  CHECK(alloc.stats().bytes_in_use == in_use);
}

TEST_CASE("the caching allocator rounds requests to 512 bytes, and past 1 MiB to 1 MiB",
          "[tensor][allocator]") {
  constexpr size_t kMiB = size_t{1} << 20;
  CHECK(CachingAllocator::round_size(0) == 512);
  CHECK(CachingAllocator::round_size(1) == 512);
  CHECK(CachingAllocator::round_size(513) == 1024);
  CHECK(CachingAllocator::round_size(kMiB - 1) == kMiB);
  CHECK(CachingAllocator::round_size(kMiB + 1) == 2 * kMiB);
}

TEST_CASE("a cached block serves no request that would waste more than half of it",
          "[tensor][allocator]") {
  CachingAllocator& alloc = cpu_allocator();
  alloc.release_cached();
  void* block = nullptr;
  {
    Tensor t = Tensor::empty({1000, 1000});  // 4 MB: a block of 4 MiB
    block = t.raw_data();
  }
  {
    Tensor over_half = Tensor::empty({600, 1000});  // 2.4 MB: 3 MiB, over half the block
    CHECK(over_half.raw_data() == block);
  }
  {
    Tensor quarter = Tensor::empty({250, 1000});  // 1 MB: a quarter of the block
    CHECK(quarter.raw_data() != block);
  }
  alloc.release_cached();
  CHECK(alloc.stats().bytes_cached == 0);
}

TEST_CASE("the host allocator gives its cache back before it refuses a block",
          "[tensor][allocator]") {
  // A block of 60% of the memory, freed into the cache, then one of 70%: the two would hold more
  // than the capacity, so the cache goes back to the system first and the second is served.
  CachingAllocator& alloc = cpu_allocator();
  alloc.release_cached();
  std::ifstream overcommit("/proc/sys/vm/overcommit_memory");
  int policy = 0;
  if (overcommit >> policy && policy == 2) {
    WARN("strict overcommit: blocks of 60% and 70% of the memory not tried");
    return;
  }
  void* first = nullptr;
  try {
    first = alloc.allocate(alloc.capacity() / 10 * 6);
  } catch (const OutOfMemory&) {
    WARN("the system refused a block of 60% of the memory: nothing left to check");
    return;
  }
  alloc.deallocate(first);
  REQUIRE(alloc.stats().bytes_cached >= alloc.capacity() / 10 * 6);
  void* second = nullptr;
  REQUIRE_NOTHROW(second = alloc.allocate(alloc.capacity() / 10 * 7));
  CHECK(alloc.stats().bytes_cached == 0);  // the 60% block went back to the system
  alloc.deallocate(second);
  alloc.release_cached();
}

TEST_CASE("the host allocator holds no more than the machine's memory", "[tensor][allocator]") {
  // Two blocks of 60% of the memory each: Linux would hand out both (their pages untouched), and
  // a process that touched them would be killed; the second is refused as out of memory.
  const size_t physical =
      static_cast<size_t>(sysconf(_SC_PHYS_PAGES)) * static_cast<size_t>(sysconf(_SC_PAGESIZE));
  CachingAllocator& alloc = cpu_allocator();
  CHECK(alloc.capacity() <= physical);
  std::ifstream overcommit("/proc/sys/vm/overcommit_memory");
  int policy = 0;
  if (overcommit >> policy && policy == 2) {
    WARN(
        "strict overcommit: a block of 60% of the memory would hold that much commit charge "
        "while other tests run; not tried");
    return;
  }
  const size_t block = alloc.capacity() / 10 * 6;
  void* first = nullptr;
  try {
    first = alloc.allocate(block);
  } catch (const OutOfMemory&) {
    WARN(
        "the system refused a block of 60% of the memory (strict overcommit, or memory in use): "
        "nothing left to check");
    return;
  }
  CHECK_THROWS_AS(alloc.allocate(block), OutOfMemory);
  alloc.deallocate(first);
  alloc.release_cached();  // the block goes back to the system: nothing held from here
  CHECK(alloc.stats().bytes_in_use + alloc.stats().bytes_cached < block);
}

TEST_CASE("blocks a graph capture allocated serve nothing else until the graph is released",
          "[tensor][allocator]") {
  // CudaGraph fills a pool of the device allocator while it captures (engine/cuda_graph.h); the
  // allocator is the same class on the host, where this can run.
  CachingAllocator& alloc = cpu_allocator();
  alloc.release_cached();
  void* shared = nullptr;
  {
    Tensor t = Tensor::empty({1000, 1000});
    shared = t.raw_data();
  }
  void* captured_freed = nullptr;
  void* captured_kept = nullptr;
  std::optional<Tensor> output;  // what a captured step leaves behind, like its loss
  const uint64_t pool = alloc.begin_pool();
  CHECK_THROWS_AS(alloc.begin_pool(), std::logic_error);
  {
    Tensor activation = Tensor::empty({1000, 1000});  // from the shared cache, now the pool's
    captured_freed = activation.raw_data();
    CHECK(captured_freed == shared);
    output = Tensor::empty({2000, 1000});
    captured_kept = output->raw_data();
  }
  {
    Tensor again = Tensor::empty({1000, 1000});  // inside the capture: the pool's own block
    CHECK(again.raw_data() == captured_freed);
  }
  alloc.end_pool();
  output.reset();
  // The graph is alive: eager work gets neither the freed nor the dropped capture blocks, and
  // release_cached keeps them.
  alloc.release_cached();
  CHECK(alloc.stats().bytes_cached >= 12000000);
  {
    Tensor eager = Tensor::empty({1000, 1000});
    Tensor eager_large = Tensor::empty({2000, 1000});
    CHECK(eager.raw_data() != captured_freed);
    CHECK(eager_large.raw_data() != captured_kept);
  }
  // The graph is gone: its blocks serve everyone again.
  alloc.release_cached();
  alloc.release_pool(pool);
  {
    Tensor t = Tensor::empty({2000, 1000});
    CHECK(t.raw_data() == captured_kept);
  }
  alloc.release_cached();
  CHECK(alloc.stats().bytes_cached == 0);
}

TEST_CASE("a tensor made before a capture and dropped during it stays the graph's",
          "[tensor][allocator]") {
  // The captured work may read or write such a block (a step's input, the last step's
  // gradients), so no eager work may take it while the graph can replay.
  CachingAllocator& alloc = cpu_allocator();
  alloc.release_cached();
  std::optional<Tensor> before = Tensor::empty({1000, 1000});
  void* dropped = before->raw_data();
  const uint64_t pool = alloc.begin_pool();
  before.reset();
  alloc.end_pool();
  {
    Tensor eager = Tensor::empty({1000, 1000});
    CHECK(eager.raw_data() != dropped);
  }
  alloc.release_cached();
  alloc.release_pool(pool);
  {
    Tensor eager = Tensor::empty({1000, 1000});
    CHECK(eager.raw_data() == dropped);
  }
  alloc.release_cached();
  CHECK(alloc.stats().bytes_cached == 0);
}

TEST_CASE("CUDA tensors are refused clearly without a device", "[tensor]") {
  if (cuda_device_count() > 0) return;  // covered by the [gpu] tests on a CUDA machine
  CHECK_THROWS(Tensor::zeros({2}, DType::f32, Device::cuda(0)));
  const Tensor host = Tensor::full({3}, 1.0);
  CHECK_THROWS(upload_without_waiting(host, Device::cuda(0)));
  CHECK(upload_without_waiting(host, Device::cpu()).raw_data() == host.raw_data());
  CHECK(parse_device("cuda:1").index == 1);
  CHECK_THROWS_WITH(parse_device("gpu"), Catch::Contains("gpu"));
}

TEST_CASE("drop-path keeps each sample with probability 1 - rate and rescales it", "[drop_path]") {
  Rng rng(7);
  const double rate = 0.2;
  const int64_t B = 200000;
  const std::vector<double> s = ops::drop_path_keep_scales(B, rate, rng, DType::f64)
                                    .to_vector<double>();
  int64_t kept = 0;
  double sum = 0;
  for (double v : s) {
    REQUIRE((v == 0.0 || v == Approx(1.0 / (1.0 - rate))));
    kept += v != 0.0;
    sum += v;
  }
  // Binomial(B, 0.8): standard deviation sqrt(B * 0.8 * 0.2) ~ 179; allow 5 sigma.
  CHECK(std::abs(kept - 0.8 * B) < 5 * std::sqrt(B * 0.16));
  CHECK(sum / B == Approx(1.0).epsilon(0.01));  // the expectation of the branch is preserved
  for (double v : ops::drop_path_keep_scales(8, 0.0, rng, DType::f64).to_vector<double>())
    CHECK(v == 1.0);
  CHECK_THROWS(ops::drop_path_keep_scales(8, 1.0, rng, DType::f64));
}

TEST_CASE("Rng::below draws from 0 to n - 1 and refuses n = 0", "[rng]") {
  Rng rng(11);
  for (int i = 0; i < 100; ++i) CHECK(rng.below(3) < 3);
  CHECK(rng.below(1) == 0);
  // [0, 0) holds no integer; the rejection bound would divide by 0.
  CHECK_THROWS_AS(rng.below(0), std::invalid_argument);
}

TEST_CASE("Rng::trunc_normal keeps the model's draws and refuses intervals it cannot hit",
          "[rng]") {
  // The model's initialisation (std 0.02 in [-2, 2], a bound 100 std out): every draw is the
  // first normal draw.
  Rng pinned(0);
  CHECK(pinned.trunc_normal(0.02, -2, 2) == -0.00389874184158957);
  CHECK(pinned.trunc_normal(0.02, -2, 2) == 0.015184771961573711);
  CHECK(pinned.trunc_normal(0.02, -2, 2) == 0.002900928566635898);
  Rng rng(42, 3), twin(42, 3);
  for (int i = 0; i < 10000; ++i) REQUIRE(rng.trunc_normal(0.02, -2, 2) == 0.02 * twin.normal());

  // An unlikely interval is still drawn from (about 760 draws each for [3, 4]).
  for (int i = 0; i < 100; ++i) {
    const double v = rng.trunc_normal(1, 3, 4);
    REQUIRE((v >= 3 && v <= 4));
  }
  // [50, 60] holds 0 of the distribution in double, and 1e-12 around 0.5 too little: rejection
  // would search them for ever. Empty or reversed intervals, no spread: refused as well.
  CHECK_THROWS_WITH(rng.trunc_normal(1, 50, 60),
                    Catch::Contains("Normal(0, 1.000000) truncated to [50.000000, 60.000000]"));
  for (const auto& [spread, lo, hi] : std::vector<std::array<double, 3>>{{1, 0.5, 0.5 + 1e-12},
                                                                         {1, 2, 1},
                                                                         {1, 1, 1},
                                                                         {0, -1, 1},
                                                                         {-1, -1, 1},
                                                                         {std::nan(""), -1, 1},
                                                                         {HUGE_VAL, -1, 1},
                                                                         {1, std::nan(""), 1}})
    CHECK_THROWS_AS(rng.trunc_normal(spread, lo, hi), std::invalid_argument);
}
