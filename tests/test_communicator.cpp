// The communicator without other processes: how lists of tensors are cut into buckets, the
// single-process backend (every collective, gradient buckets included, leaves values as they are,
// but misuse is still refused), and the choice of backend. The MPI backend runs under mpirun:
// tests/test_comm_mpi.cpp.
#include <catch2/catch.hpp>

#include "engine/communicator.h"
#include "engine/rng.h"

using namespace deit;

namespace {

std::vector<Tensor> tensors_of(std::initializer_list<std::pair<int64_t, DType>> specs) {
  std::vector<Tensor> list;
  for (const auto& [numel, dtype] : specs) list.push_back(Tensor::zeros({numel}, dtype));
  return list;
}

using Plan = std::vector<std::vector<size_t>>;

}  // namespace

TEST_CASE("buckets: small tensors share one up to its size, large ones go alone", "[comm]") {
  // f32: 100 bytes per 25 elements.
  const auto list = tensors_of({{10, DType::f32},  // 40 bytes
                                {10, DType::f32},  // 80
                                {5, DType::f32},   // 100: fills the bucket exactly
                                {1, DType::f32},   // next bucket
                                {25, DType::f32},  // a whole bucket: alone
                                {2, DType::f32},
                                {1000, DType::f32},  // larger than a bucket: alone
                                {3, DType::f32},
                                {3, DType::f64},  // another dtype starts another bucket
                                {0, DType::f64}});
  CHECK(plan_buckets(list, 100) == Plan{{0, 1, 2}, {3}, {4}, {5}, {6}, {7}, {8, 9}});
  CHECK(plan_buckets(list, 1 << 20) == Plan{{0, 1, 2, 3, 4, 5, 6, 7}, {8, 9}});
  CHECK(plan_buckets({}, 100).empty());
  CHECK_THROWS_WITH(plan_buckets(list, 0), Catch::Contains("0 bytes"));
}

TEST_CASE("the single-process communicator: world 1, values unchanged", "[comm]") {
  Rendezvous alone;
  alone.local_rank = 0;
  auto comm = make_communicator(Device::cpu(), alone);
  CHECK(std::string(comm->backend()) == "single");
  CHECK(comm->rank() == 0);
  CHECK(comm->world_size() == 1);
  CHECK(comm->local_rank() == 0);
  CHECK(comm->device() == Device::cpu());

  Rng rng(3);
  const Tensor a = Tensor::randn({4, 5}, rng);
  const Tensor b = Tensor::randn({7}, rng, 1.0, DType::f64);
  const std::vector<float> a0 = a.to_vector<float>();
  const std::vector<double> b0 = b.to_vector<double>();
  comm->all_reduce_sum(a);
  comm->all_reduce_mean(b);
  comm->all_reduce_mean({a, b}, 16);
  comm->broadcast(a, 0);
  comm->broadcast({a, b}, 0);
  comm->all_gather({a, b}, {0, 0});
  comm->barrier();
  CHECK(a.to_vector<float>() == a0);
  CHECK(b.to_vector<double>() == b0);

  std::vector<double> metrics = {2.5, -1.0, 7.0};
  comm->all_reduce_sum(metrics);
  CHECK(metrics == std::vector<double>{2.5, -1.0, 7.0});
  comm->all_reduce_mean(metrics);
  CHECK(metrics == std::vector<double>{2.5, -1.0, 7.0});
}

TEST_CASE("gradient buckets alone: values unchanged, scratch and dtypes checked", "[comm]") {
  auto comm = make_communicator(Device::cpu(), Rendezvous{});
  CHECK(comm->collectives_are_noops());
  Rng rng(4);
  const Tensor a = Tensor::randn({10}, rng), b = Tensor::randn({4, 5}, rng);
  const std::vector<float> a0 = a.to_vector<float>(), b0 = b.to_vector<float>();
  const Tensor scratch = Tensor::empty({40});
  comm->start_bucket_mean({a, b}, scratch);
  comm->start_bucket_mean({a}, Tensor());  // a lone tensor needs no scratch
  comm->start_bucket_mean({Tensor::zeros({0}), b}, Tensor());  // nor one with empty company
  comm->start_bucket_mean({a, b}, scratch, {0, 0});            // a reduce-scatter over one rank
  comm->finish_buckets();
  CHECK(a.to_vector<float>() == a0);
  CHECK(b.to_vector<float>() == b0);
  CHECK_FALSE(comm->last_bucket_timing());  // buckets run on the host here

  CHECK_THROWS_WITH(comm->start_bucket_mean({a, b}, Tensor::empty({29})),
                    Catch::Contains("scratch"));
  CHECK_THROWS_WITH(comm->start_bucket_mean({a, b}, Tensor::empty({30}, DType::f64)),
                    Catch::Contains("scratch"));
  CHECK_THROWS_WITH(comm->start_bucket_mean({a, b}, Tensor()), Catch::Contains("undefined"));
  CHECK_THROWS_WITH(comm->start_bucket_mean({a, Tensor::zeros({3}, DType::f64)}, scratch),
                    Catch::Contains("one dtype per bucket"));
}

TEST_CASE("reduce-scatter and all-gather refuse owners that are not ranks in order, even alone",
          "[comm]") {
  auto comm = make_communicator(Device::cpu(), Rendezvous{});
  const Tensor a = Tensor::zeros({10}), b = Tensor::zeros({4}), scratch = Tensor::empty({14});
  CHECK_THROWS_WITH(comm->start_bucket_mean({a, b}, scratch, {0}),
                    Catch::Contains("1 owners for 2 tensors"));
  CHECK_THROWS_WITH(comm->start_bucket_mean({a, b}, scratch, {0, 1}),
                    Catch::Contains("owner 1 of tensor 1 in a world of 1"));
  CHECK_THROWS_WITH(comm->all_gather({a, b}, {0, -1}), Catch::Contains("owner -1 of tensor 1"));
  CHECK_THROWS_WITH(comm->all_gather({a}, {}), Catch::Contains("0 owners for 1 tensors"));
}

TEST_CASE("a communicator refuses what no backend could reduce, even alone", "[comm]") {
  auto comm = make_communicator(Device::cpu(), Rendezvous{});
  CHECK_THROWS_WITH(comm->all_reduce_sum(Tensor::zeros({3}, DType::bf16)),
                    Catch::Contains("f32 and f64 only"));
  CHECK_THROWS_WITH(comm->all_reduce_mean({Tensor::zeros({3}), Tensor::zeros({2}, DType::i32)}),
                    Catch::Contains("f32 and f64 only"));
  CHECK_THROWS_WITH(comm->all_reduce_sum(Tensor()), Catch::Contains("undefined"));
  CHECK_THROWS_WITH(comm->broadcast(Tensor::zeros({3}), 1),
                    Catch::Contains("root 1 in a world of 1"));
  // A list too, though alone it has nothing to send.
  CHECK_THROWS_WITH(comm->broadcast(std::vector<Tensor>{Tensor::zeros({3})}, 1),
                    Catch::Contains("root 1 in a world of 1"));
  auto on_gpu = make_communicator(Device::cuda(0), Rendezvous{});
  CHECK_THROWS_WITH(on_gpu->all_reduce_sum(Tensor::zeros({3})),
                    Catch::Contains("communicator on cuda:0"));
}

TEST_CASE("several ranks need the backend of their device", "[comm]") {
  Rendezvous two;
  two.launcher = Launcher::torchrun;
  two.rank = 1;
  two.world_size = 2;
  two.master_addr = "127.0.0.1";
  two.master_port = 29500;
#if !DEIT_HAVE_MPI
  CHECK_THROWS_WITH(make_communicator(Device::cpu(), two),
                    Catch::Contains("this deit was built without MPI"));
#endif
#if !DEIT_HAVE_NCCL
  CHECK_THROWS_WITH(make_communicator(Device::cuda(0), two),
                    Catch::Contains("this deit was built without NCCL"));
#endif
}
