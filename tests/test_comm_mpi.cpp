// The MPI backend, run by every rank of `mpirun -np 2` and, but for the hidden cases, of `-np 3`
// (tests/CMakeLists.txt: mpi_tests, mpi_comm_three_ranks). Each rank draws its inputs from
// Rng(seed, rank), so every rank can compute what the reduction of all ranks' inputs must be and
// check it on its own.
//
// The hidden [mpi][.mpi_rank_*] cases (exits, throws, hangs, hangs_at_start, hangs_at_exit) make
// rank 1 fail on purpose; their CTest entries pass when the job then ends with an error rather than
// hanging. By hand:
//   mpirun -np 2 build/tests/deit_tests "[mpi]~[.]"   (without ~[.] the hidden cases run too)
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "engine/communicator.h"
#include "engine/rng.h"
#include "tests/test_distributed_helpers.h"

using namespace deit;

namespace {

std::unique_ptr<Communicator> mpi_communicator() {
  auto comm = make_communicator(Device::cpu(), detect_rendezvous());
  REQUIRE(std::string(comm->backend()) == "mpi");
  REQUIRE(comm->world_size() >= 2);
  return comm;
}

Tensor input_of(int rank, const Shape& shape, DType dtype, uint64_t seed) {
  Rng rng(seed, static_cast<uint64_t>(rank));
  return Tensor::randn(shape, rng, 1.0, dtype);
}

// The elementwise sum over all ranks' inputs, added in rank order in double.
std::vector<double> expected_sum(int world, const Shape& shape, DType dtype, uint64_t seed) {
  std::vector<double> sum(shape_numel(shape), 0.0);
  for (int r = 0; r < world; ++r) {
    const std::vector<double> x = input_of(r, shape, dtype, seed).to_vector<double>();
    for (size_t i = 0; i < sum.size(); ++i) sum[i] += x[i];
  }
  return sum;
}

void check_close(const Tensor& got, const std::vector<double>& want, double scale = 1.0) {
  const std::vector<double> values = got.to_vector<double>();
  REQUIRE(values.size() == want.size());
  const double tolerance = got.dtype() == DType::f32 ? 1e-5 : 1e-12;
  for (size_t i = 0; i < values.size(); ++i)
    if (std::abs(values[i] - want[i] * scale) > tolerance * (1 + std::abs(want[i])))
      FAIL("element " << i << ": " << values[i] << ", expected " << want[i] * scale);
}

std::vector<uint8_t> bytes_of(const Tensor& t) {
  const auto* p = static_cast<const uint8_t*>(t.raw_data());
  return std::vector<uint8_t>(p, p + t.nbytes());
}

}  // namespace

TEST_CASE("mpi: all_reduce_sum and all_reduce_mean give every rank the reduction",
          "[mpi][comm_mpi]") {
  auto comm = mpi_communicator();
  const int world = comm->world_size();
  for (DType dtype : {DType::f32, DType::f64}) {
    INFO(dtype_name(dtype));
    const Shape shape{37, 11};
    Tensor sum = input_of(comm->rank(), shape, dtype, 1);
    comm->all_reduce_sum(sum);
    check_close(sum, expected_sum(world, shape, dtype, 1));

    Tensor mean = input_of(comm->rank(), shape, dtype, 2);
    comm->all_reduce_mean(mean);
    check_close(mean, expected_sum(world, shape, dtype, 2), 1.0 / world);
  }
}

TEST_CASE("mpi: a list of tensors is reduced in buckets", "[mpi][comm_mpi]") {
  auto comm = mpi_communicator();
  const int world = comm->world_size();
  constexpr size_t kBucketBytes = 16384;  // 4096 floats
  const std::vector<std::pair<Shape, DType>> specs = {
      {{1000}, DType::f32},  {{3}, DType::f32},    {{70000}, DType::f32},  // larger than a bucket
      {{17, 5}, DType::f32}, {{4096}, DType::f32}, {{0}, DType::f32},      // exactly a bucket
      {{1}, DType::f32},     {{33}, DType::f64},   {{9000}, DType::f64},  {{2, 3}, DType::f64}};
  std::vector<Tensor> tensors;
  for (size_t i = 0; i < specs.size(); ++i)
    tensors.push_back(input_of(comm->rank(), specs[i].first, specs[i].second, 10 + i));
  // The case covers packed groups and tensors reduced alone.
  const auto plan = plan_buckets(tensors, kBucketBytes);
  CHECK(plan == std::vector<std::vector<size_t>>{{0, 1}, {2}, {3}, {4}, {5, 6}, {7}, {8}, {9}});

  comm->all_reduce_mean(tensors, kBucketBytes);
  for (size_t i = 0; i < specs.size(); ++i) {
    INFO("tensor " << i << ": " << tensors[i].describe());
    check_close(tensors[i], expected_sum(world, specs[i].first, specs[i].second, 10 + i),
                1.0 / world);
  }

  // With the default bucket size everything small shares one bucket per dtype.
  for (size_t i = 0; i < specs.size(); ++i)
    tensors[i] = input_of(comm->rank(), specs[i].first, specs[i].second, 30 + i);
  comm->all_reduce_sum(tensors);
  for (size_t i = 0; i < specs.size(); ++i)
    check_close(tensors[i], expected_sum(world, specs[i].first, specs[i].second, 30 + i));
}

TEST_CASE("mpi: broadcast overwrites the other ranks with the root's values", "[mpi][comm_mpi]") {
  auto comm = mpi_communicator();
  const int last = comm->world_size() - 1;
  for (int root : {0, last}) {
    INFO("root " << root);
    const Tensor mine = input_of(comm->rank(), {6, 7}, DType::f32, 5);
    comm->broadcast(mine, root);
    CHECK(mine.to_vector<float>() == input_of(root, {6, 7}, DType::f32, 5).to_vector<float>());
  }

  // A list, in buckets: parameters at the start of training.
  std::vector<Tensor> params;
  for (int64_t n : {5, 3000, 2, 700}) params.push_back(input_of(comm->rank(), {n}, DType::f32, n));
  comm->broadcast(params, 0, 1024);
  for (const Tensor& p : params)
    CHECK(p.to_vector<float>() == input_of(0, p.shape(), DType::f32, p.numel()).to_vector<float>());
}

TEST_CASE("mpi: a reduce-scatter averages each tensor on its owner, an all-gather spreads them",
          "[mpi][comm_mpi]") {
  auto comm = mpi_communicator();
  const int world = comm->world_size();
  const int last = world - 1;
  // Rank 0 owns the first two tensors, a middle rank the third (the last rank when there are
  // two), the last rank the others, an empty one among them.
  const std::vector<int64_t> sizes = {300, 1, 40, 0, 77, 1000};
  const std::vector<int> owners = {0, 0, world / 2, last, last, last};
  for (DType dtype : {DType::f32, DType::f64}) {
    INFO(dtype_name(dtype));
    auto inputs = [&](int rank, uint64_t seed) {
      std::vector<Tensor> list;
      for (size_t i = 0; i < sizes.size(); ++i)
        list.push_back(input_of(rank, {sizes[i]}, dtype, seed + i));
      return list;
    };
    // Checks the averages of `tensors` (of inputs(., seed)) that this rank owns.
    auto check_owned = [&](const std::vector<Tensor>& tensors, const std::vector<int>& owned_by,
                           uint64_t seed) {
      for (size_t i = 0; i < tensors.size(); ++i) {
        if (owned_by[i] != comm->rank()) continue;
        INFO("seed " << seed << ", tensor " << i << " of " << tensors[i].numel() << " elements");
        check_close(tensors[i], expected_sum(world, tensors[i].shape(), dtype, seed + i),
                    1.0 / world);
      }
    };
    const Tensor scratch = Tensor::empty({2000}, dtype);

    // Packed into the scratch, a run per owner, and unpacked.
    std::vector<Tensor> tensors = inputs(comm->rank(), 40);
    comm->start_bucket_mean(tensors, scratch, owners);
    check_owned(tensors, owners, 40);

    // Where they lie, packed in one buffer (a gradient reducer's homes).
    const Tensor home = Tensor::empty({1418}, dtype);
    tensors = inputs(comm->rank(), 50);
    std::vector<Tensor> homed;
    int64_t offset = 0;
    for (const Tensor& t : tensors) {
      homed.push_back(home.slice(offset, offset + t.numel()));
      homed.back().copy_from(t);
      offset += t.numel();
    }
    comm->start_bucket_mean(homed, home, owners);
    check_owned(homed, owners, 50);

    // Ranks without a share of the bucket: one tensor alone, and two of one owner.
    tensors = inputs(comm->rank(), 60);
    comm->start_bucket_mean({tensors[5]}, Tensor(), {last});
    comm->start_bucket_mean({tensors[0], tensors[2]}, scratch, {last, last});
    check_owned(tensors, {last, -1, last, -1, -1, last}, 60);  // -1: not reduced
    comm->finish_buckets();

    // In buckets of 1 KiB, some tensors alone, one bucket shared by both owners; then in one.
    for (size_t bucket_bytes : {size_t{1024}, Communicator::kDefaultBucketBytes}) {
      INFO("buckets of " << bucket_bytes << " bytes");
      tensors = inputs(comm->rank(), 70);
      comm->all_gather(tensors, owners, bucket_bytes);
      for (size_t i = 0; i < tensors.size(); ++i)
        CHECK(bytes_of(tensors[i]) == bytes_of(input_of(owners[i], {sizes[i]}, dtype, 70 + i)));
    }
  }
  // Owners out of order are refused on every rank, before any collective.
  const std::vector<Tensor> two = {Tensor::zeros({3}), Tensor::zeros({2})};
  CHECK_THROWS_WITH(comm->all_gather(two, {last, 0}), Catch::Contains("non-decreasing"));
  CHECK_THROWS_WITH(comm->start_bucket_mean(two, Tensor::empty({5}), {last, 0}),
                    Catch::Contains("non-decreasing"));
}

TEST_CASE("mpi: metrics are summed and averaged over ranks", "[mpi][comm_mpi]") {
  auto comm = mpi_communicator();
  const int world = comm->world_size();
  const double r = comm->rank();
  std::vector<double> metrics = {r + 1, 10 * r, 0.5};
  comm->all_reduce_sum(metrics);
  CHECK(metrics == std::vector<double>{world * (world + 1) / 2.0, 10.0 * world * (world - 1) / 2,
                                       0.5 * world});
  metrics = {2 * r, 1.0};
  comm->all_reduce_mean(metrics);
  CHECK(metrics == std::vector<double>{world - 1.0, 1.0});
  comm->barrier();
}

TEST_CASE("mpi: the same inputs reduce to the same bits, run after run and on every rank",
          "[mpi][comm_mpi]") {
  auto comm = mpi_communicator();
  const Shape shape{100003};  // past Open MPI's small-message algorithms
  std::vector<uint8_t> first;
  for (int run = 0; run < 2; ++run) {
    const Tensor t = input_of(comm->rank(), shape, DType::f32, 77);
    comm->all_reduce_mean(t);
    if (run == 0) {
      first = bytes_of(t);
    } else {
      CHECK(bytes_of(t) == first);
    }
  }
  // Rank 0's result, sent to every rank, is theirs bit for bit.
  const Tensor carrier = Tensor::empty(shape, DType::f32);
  std::memcpy(carrier.raw_data(), first.data(), first.size());
  comm->broadcast(carrier, 0);
  CHECK(bytes_of(carrier) == first);
}

TEST_CASE("mpi: a launch MPI did not make is refused", "[mpi][comm_mpi]") {
  Rendezvous wrong = detect_rendezvous();
  wrong.world_size += 1;
  CHECK_THROWS_WITH(make_communicator(Device::cpu(), wrong), Catch::Contains("MPI sees rank"));
}

TEST_CASE("mpi: a rank that dies ends the job", "[mpi][.mpi_rank_exits]") {
  auto comm = mpi_communicator();
  if (comm->rank() == 0) {
    std::printf("rank 0 goes on to a collective that rank 1 will miss\n");
    std::fflush(stdout);
  }
  comm->barrier();
  if (comm->rank() == 1) std::_Exit(3);
  comm->all_reduce_sum(Tensor::full({4}, 1.0));  // waits here until mpirun ends this rank
  FAIL("the all-reduce returned without rank 1");
}

TEST_CASE("mpi: a rank that leaves by an exception ends the job", "[mpi][.mpi_rank_throws]") {
  auto comm = mpi_communicator();
  comm->barrier();
  // Catch reports the exception and rank 1 exits non-zero; its communicator saw the exception go
  // by and leaves MPI unfinalised, so the exit does not wait for rank 0, which sits in the
  // all-reduce below until mpirun ends it.
  if (comm->rank() == 1) throw std::runtime_error("rank 1 fails on purpose");
  comm->all_reduce_sum(Tensor::full({4}, 1.0));
  FAIL("the all-reduce returned without rank 1");
}

TEST_CASE("mpi: a rank that hangs ends the job after the wait for it", "[mpi][.mpi_rank_hangs]") {
  // Stopped, rank 1 neither dies nor answers: nothing tells mpirun to end the job until rank 0
  // gives up on its all-reduce and exits by the exception, which Catch reports.
  const test::StoppedRank job = test::stop_rank(1);
  job.comm->all_reduce_sum(Tensor::full({4}, 1.0));
  FAIL("the all-reduce returned without rank 1");
}

TEST_CASE("mpi: a rank that hangs before a communicator is made ends the job after the wait",
          "[mpi][.mpi_rank_hangs_at_start]") {
  const test::StoppedRank job = test::stop_rank(1);
  // Making a communicator is collective: rank 0 waits in it for rank 1.
  make_communicator(Device::cpu(), job.rendezvous);
  FAIL("a communicator was made without rank 1");
}

TEST_CASE("mpi: a rank that hangs before MPI starts ends the job after the wait",
          "[mpi][.mpi_rank_hangs_before_init]") {
  Rendezvous rendezvous = detect_rendezvous();
  rendezvous.comm_timeout = std::chrono::seconds(2);
  if (rendezvous.rank == 1) std::raise(SIGSTOP);
  make_communicator(Device::cpu(), rendezvous);
  FAIL("a communicator was made without rank 1");
}

TEST_CASE("mpi: a rank that hangs after the last collective ends the job after the wait",
          "[mpi][.mpi_rank_hangs_at_exit]") {
  const test::StoppedRank job = test::stop_rank(1);
  // Rank 0 passes: its exit waits for rank 1 (MPI_Finalize is collective) until the deadline.
  std::printf("rank 0 goes on to its exit without rank 1\n");
  std::fflush(stdout);
}
