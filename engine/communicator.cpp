#include "engine/communicator.h"

#include <functional>
#include <stdexcept>
#include <string>

#include "engine/comm_check.h"
#include "engine/stream.h"
#include "kernels/check.h"

namespace deit {

std::vector<std::vector<size_t>> plan_buckets(const std::vector<Tensor>& tensors,
                                              size_t bucket_bytes) {
  if (bucket_bytes == 0) throw std::invalid_argument("plan_buckets: a bucket of 0 bytes");
  std::vector<std::vector<size_t>> groups;
  size_t last_bytes = 0;   // in the last group
  bool last_open = false;  // whether the last group takes more tensors
  for (size_t i = 0; i < tensors.size(); ++i) {
    const size_t bytes = tensors[i].nbytes();
    const bool alone = bytes >= bucket_bytes;  // fills a bucket by itself: reduced in place
    if (!alone && last_open && tensors[i].dtype() == tensors[groups.back().front()].dtype() &&
        last_bytes + bytes <= bucket_bytes) {
      groups.back().push_back(i);
      last_bytes += bytes;
    } else {
      groups.push_back({i});
      last_bytes = bytes;
      last_open = !alone;
    }
  }
  return groups;
}

namespace {

int64_t total_numel(const std::vector<Tensor>& tensors) {
  int64_t total = 0;
  for (const Tensor& t : tensors) total += t.numel();
  return total;
}

// Whether `tensors` lie one after another in `flat` from its start (a gradient reducer's bucket in
// its homes), so that the bucket can be reduced where it lies.
bool lie_packed_in(const std::vector<Tensor>& tensors, const Tensor& flat) {
  const auto* at = static_cast<const unsigned char*>(flat.raw_data());
  for (const Tensor& t : tensors) {
    if (t.raw_data() != at) return false;
    at += t.nbytes();
  }
  return true;
}

// Which tensors of a bucket a collective reads, or writes, in the packed buffer (by index into the
// list given); empty: every one.
using TensorFilter = std::function<bool(size_t)>;

// Runs `collective` on one bucket as one flat tensor: a lone tensor as a view of itself; several
// packed into `flat` (of their total size), and unpacked afterwards: those of `packed`, and of
// `unpacked`.
void run_bucket(const std::vector<Tensor>& tensors, const Tensor& flat,
                const std::function<void(const Tensor&)>& collective,
                const TensorFilter& packed = {}, const TensorFilter& unpacked = {}) {
  if (tensors.size() == 1) {
    collective(tensors[0].view({tensors[0].numel()}));
    return;
  }
  int64_t offset = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const int64_t n = tensors[i].numel();
    if (!packed || packed(i)) flat.slice(offset, offset + n).copy_from(tensors[i].view({n}));
    offset += n;
  }
  collective(flat);
  offset = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const int64_t n = tensors[i].numel();
    if (!unpacked || unpacked(i)) tensors[i].view({n}).copy_from(flat.slice(offset, offset + n));
    offset += n;
  }
}

// Runs `collective` on each bucket of `tensors` (plan_buckets) with run_bucket, packing groups
// into scratch memory of their size. The collective is given the bucket's indices into `tensors`,
// and so are the filters.
void for_each_bucket(
    const std::vector<Tensor>& tensors, size_t bucket_bytes, Device device,
    const std::function<void(const Tensor& flat, const std::vector<size_t>& group)>& collective,
    const TensorFilter& packed = {}, const TensorFilter& unpacked = {}) {
  for (const std::vector<size_t>& group : plan_buckets(tensors, bucket_bytes)) {
    std::vector<Tensor> bucket;
    for (size_t i : group) bucket.push_back(tensors[i]);
    const int64_t total = total_numel(bucket);
    if (total == 0) continue;
    const Tensor flat = bucket.size() == 1
                            ? Tensor()
                            : Tensor::empty({total}, bucket.front().dtype(), device);
    auto in_group = [&group](const TensorFilter& filter) -> TensorFilter {
      if (!filter) return {};
      return [&group, &filter](size_t i) { return filter(group[i]); };
    };
    run_bucket(
        bucket, flat, [&](const Tensor& f) { collective(f, group); }, in_group(packed),
        in_group(unpacked));
  }
}

template <typename T>
std::vector<T> pick(const std::vector<T>& values, const std::vector<size_t>& indices) {
  std::vector<T> picked;
  for (size_t i : indices) picked.push_back(values[i]);
  return picked;
}

}  // namespace

Communicator::Communicator(Device device, int rank, int world_size, int local_rank)
    : device_(device), rank_(rank), world_size_(world_size), local_rank_(local_rank) {}

void Communicator::check_tensor(const Tensor& tensor, const char* what) const {
  if (!tensor.defined()) throw std::invalid_argument(std::string(what) + ": an undefined tensor");
  if (tensor.dtype() != DType::f32 && tensor.dtype() != DType::f64)
    throw std::invalid_argument(std::string(what) + ": " + tensor.describe() +
                                " (f32 and f64 only)");
  if (tensor.device() != device_)
    throw std::invalid_argument(std::string(what) + ": " + tensor.describe() + " for a " +
                                backend() + " communicator on " + device_.str());
}

void Communicator::check_root(int root) const {
  if (root < 0 || root >= world_size_)
    throw std::invalid_argument("broadcast: root " + std::to_string(root) + " in a world of " +
                                std::to_string(world_size_));
}

std::vector<int64_t> Communicator::runs_of(const std::vector<Tensor>& tensors,
                                           const std::vector<int>& owners, const char* what) const {
  if (owners.size() != tensors.size())
    throw std::invalid_argument(std::string(what) + ": " + std::to_string(owners.size()) +
                                " owners for " + std::to_string(tensors.size()) + " tensors");
  std::vector<int64_t> counts(world_size_, 0);
  for (size_t i = 0; i < owners.size(); ++i) {
    if (owners[i] < 0 || owners[i] >= world_size_ || (i > 0 && owners[i] < owners[i - 1]))
      throw std::invalid_argument(std::string(what) + ": owner " + std::to_string(owners[i]) +
                                  " of tensor " + std::to_string(i) + " in a world of " +
                                  std::to_string(world_size_) +
                                  " (owners are ranks, in non-decreasing order)");
    counts[owners[i]] += tensors[i].numel();
  }
  return counts;
}

void Communicator::reduce(const Tensor& tensor, ReduceOp op) {
  check_tensor(tensor, "all_reduce");
  if (tensor.numel() > 0) all_reduce_flat(tensor.view({tensor.numel()}), op);
}

void Communicator::reduce(const std::vector<Tensor>& tensors, ReduceOp op, size_t bucket_bytes) {
  for (const Tensor& t : tensors) check_tensor(t, "all_reduce");
  // Alone, every value already is the reduction: packing buckets would only copy (but NCCL on one
  // rank, DEIT_NCCL_ONE_RANK, runs it, so that the path runs where one GPU is).
  if (collectives_are_noops()) return;
  for_each_bucket(
      tensors, bucket_bytes, device_,
      [&](const Tensor& flat, const std::vector<size_t>&) { all_reduce_flat(flat, op); });
}

void Communicator::reduce(std::vector<double>& values, ReduceOp op) {
  if (values.empty()) return;
  const int64_t n = static_cast<int64_t>(values.size());
  const Tensor t = Tensor::from_vector(values, {n}, device_);
  all_reduce_flat(t, op);
  wait_for_device();
  values = t.to_vector<double>();
}

void Communicator::wait_for_device() {
#if DEIT_HAVE_CUDA
  if (device_.is_cuda()) DEIT_CUDA_CHECK(cudaStreamSynchronize(compute_stream(device_.index)));
#endif
}

void Communicator::all_reduce_sum(const Tensor& tensor) { reduce(tensor, ReduceOp::sum); }
void Communicator::all_reduce_mean(const Tensor& tensor) { reduce(tensor, ReduceOp::mean); }
void Communicator::all_reduce_sum(const std::vector<Tensor>& tensors, size_t bucket_bytes) {
  reduce(tensors, ReduceOp::sum, bucket_bytes);
}
void Communicator::all_reduce_mean(const std::vector<Tensor>& tensors, size_t bucket_bytes) {
  reduce(tensors, ReduceOp::mean, bucket_bytes);
}
void Communicator::all_reduce_sum(std::vector<double>& values) { reduce(values, ReduceOp::sum); }
void Communicator::all_reduce_mean(std::vector<double>& values) { reduce(values, ReduceOp::mean); }

void Communicator::start_bucket_mean(const std::vector<Tensor>& tensors, const Tensor& scratch,
                                     const std::vector<int>& owners) {
  for (const Tensor& t : tensors) check_tensor(t, "start_bucket_mean");
  // The empty tensors add nothing to their owner's run, and are left out of the packing.
  const std::vector<int64_t> counts =
      owners.empty() ? std::vector<int64_t>() : runs_of(tensors, owners, "start_bucket_mean");
  std::vector<Tensor> bucket;  // the tensors with elements: the empty ones have nothing to reduce
  for (const Tensor& t : tensors)
    if (t.numel() > 0) bucket.push_back(t);
  if (bucket.empty()) return;
  for (const Tensor& t : bucket)
    if (t.dtype() != bucket.front().dtype())
      throw std::invalid_argument("start_bucket_mean: a bucket of " + bucket.front().describe() +
                                  " and " + t.describe() + " (one dtype per bucket)");
  if (bucket.size() == 1) {
    start_bucket(bucket, Tensor(), ReduceOp::mean, counts);
    return;
  }
  const int64_t total = total_numel(bucket);
  check_tensor(scratch, "start_bucket_mean scratch");
  if (scratch.dtype() != bucket.front().dtype() || scratch.numel() < total)
    throw std::invalid_argument("start_bucket_mean: scratch " + scratch.describe() + " for " +
                                std::to_string(total) + " elements like " +
                                bucket.front().describe());
  const Tensor flat = scratch.view({scratch.numel()}).slice(0, total);
  if (lie_packed_in(bucket, flat))
    start_bucket({flat}, Tensor(), ReduceOp::mean, counts);
  else
    start_bucket(bucket, flat, ReduceOp::mean, counts);
}

void Communicator::start_bucket(const std::vector<Tensor>& tensors, const Tensor& flat, ReduceOp op,
                                const std::vector<int64_t>& counts) {
  run_bucket(tensors, flat, [&](const Tensor& f) {
    if (counts.empty())
      all_reduce_flat(f, op);
    else
      reduce_scatter_flat(f, counts, op);
  });
}

void Communicator::broadcast(const Tensor& tensor, int root) {
  check_tensor(tensor, "broadcast");
  check_root(root);
  if (tensor.numel() > 0) broadcast_flat(tensor.view({tensor.numel()}), root);
  tensor.refresh_bf16_copy();  // the collective wrote the values in place
}

void Communicator::broadcast(const std::vector<Tensor>& tensors, int root, size_t bucket_bytes) {
  for (const Tensor& t : tensors) check_tensor(t, "broadcast");
  check_root(root);
  if (collectives_are_noops()) return;
  for_each_bucket(
      tensors, bucket_bytes, device_,
      [&](const Tensor& flat, const std::vector<size_t>&) { broadcast_flat(flat, root); });
  // A tensor alone in its bucket was written in place, past its bf16 copy.
  for (const Tensor& t : tensors) t.refresh_bf16_copy();
}

void Communicator::all_gather(const std::vector<Tensor>& tensors, const std::vector<int>& owners,
                              size_t bucket_bytes) {
  for (const Tensor& t : tensors) check_tensor(t, "all_gather");
  runs_of(tensors, owners, "all_gather");
  if (collectives_are_noops()) return;
  // A rank packs only its own tensors and unpacks only the others': the collective overwrites
  // every other run of the packed buffer, and leaves its own as it was.
  for_each_bucket(
      tensors, bucket_bytes, device_,
      [&](const Tensor& flat, const std::vector<size_t>& group) {
        all_gather_flat(flat, runs_of(pick(tensors, group), pick(owners, group), "all_gather"));
      },
      [&](size_t i) { return owners[i] == rank_; }, [&](size_t i) { return owners[i] != rank_; });
  for (const Tensor& t : tensors) t.refresh_bf16_copy();
}

std::unique_ptr<Communicator> make_communicator(Device device, const Rendezvous& rendezvous) {
  if (rendezvous.world_size == 1 && !(device.is_cuda() && rendezvous.nccl_one_rank))
    return std::make_unique<SingleProcessCommunicator>(device, rendezvous.local_rank);
  if (device.is_cpu()) {
#if DEIT_HAVE_MPI
    return detail::make_mpi_communicator(device, rendezvous);
#else
    throw std::runtime_error("this deit was built without MPI, which a CPU run of several ranks (" +
                             rendezvous.describe() +
                             ") needs: install libopenmpi-dev (scripts/setup.sh does) and rebuild");
#endif
  }
#if DEIT_HAVE_NCCL
  return detail::make_nccl_communicator(device, rendezvous);
#else
  const std::string run = rendezvous.world_size == 1
                              ? "a one-process CUDA run with DEIT_NCCL_ONE_RANK=1"
                              : "a CUDA run of several ranks (" + rendezvous.describe() + ")";
  throw std::runtime_error("this deit was built without NCCL, which " + run +
                           " needs: rebuild with NCCL (-DNCCL_ROOT=...)");
#endif
}

}  // namespace deit
