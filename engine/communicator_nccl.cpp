// The NCCL backend: CUDA tensors, reduced on the device's communication stream (engine/stream.h).
// The runs of sharded state (reduce_scatter_flat, all_gather_flat) are of unequal sizes, which
// ncclReduceScatter and ncclAllGather do not take: they are one group of ncclReduce, or of
// ncclBroadcast, per rank's run, each rooted at its rank (NCCL runs a group as one operation).
// Events tie it to the compute stream, where every engine kernel runs: before a collective, the
// communication stream waits for the compute stream's work so far (which produced the inputs);
// after it, the compute stream waits for the collective (a plain collective at once, in stream
// order, so it behaves as a kernel on the compute stream would; a gradient bucket only at
// finish_buckets(), so backward's later kernels run beside it). Neither wait blocks the host, and
// both are captured into a CUDA graph as dependencies. NCCL's unique id travels from rank 0 to the
// others over MPI when mpirun launched the job (and MPI is built in), else over TCP to rank 0 at
// MASTER_ADDR:MASTER_PORT (engine/rendezvous.h).
//
// NCCL reports a dead peer by never completing: a collective waits on the GPU. The launcher is
// what ends the other ranks when one exits abnormally (engine/communicator.h, "Failures"); where
// it does not, the host's wait for the device gives up after the rendezvous's comm_timeout
// (wait_for_device). The calls that make and free the communicator block until the other ranks
// (of the job, or of the node) take part; past the same deadline they end the process instead
// (engine/watchdog.h).
#include "engine/comm_check.h"

#if DEIT_HAVE_NCCL
#include <algorithm>
#include <chrono>
#include <cstring>
#include <exception>
#include <functional>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "engine/stream.h"
#include "engine/watchdog.h"
#include "kernels/cuda/event.h"

namespace deit::detail {

namespace {

// Ranks of a multi-node job may start minutes apart (a node pulling its container, a busy file
// system); the first to arrive waits this long for the others.
constexpr std::chrono::minutes kUniqueIdTimeout{10};

ncclDataType_t nccl_type(DType dtype) { return dtype == DType::f64 ? ncclFloat64 : ncclFloat32; }

// Rank 0 makes the id; every rank returns it.
ncclUniqueId exchange_unique_id(const Rendezvous& rendezvous) {
  ncclUniqueId id{};
  if (rendezvous.rank == 0) DEIT_NCCL_CHECK(ncclGetUniqueId(&id));
#if DEIT_HAVE_MPI
  if (rendezvous.launcher == Launcher::mpirun) {
    mpi_init(rendezvous);
    MPI_Request request;
    DEIT_MPI_CHECK(MPI_Ibcast(&id, sizeof(id), MPI_BYTE, 0, MPI_COMM_WORLD, &request));
    mpi_wait(request, "MPI_Ibcast of NCCL's id", rendezvous.rank, rendezvous.world_size,
             rendezvous.comm_timeout);
    return id;
  }
#endif
  const uint8_t* bytes = reinterpret_cast<const uint8_t*>(&id);
  const std::vector<uint8_t> received = tcp_broadcast_from_rank0(
      rendezvous, std::vector<uint8_t>(bytes, bytes + sizeof(id)), kUniqueIdTimeout);
  if (received.size() != sizeof(id))
    throw std::runtime_error("NCCL rendezvous: rank 0 sent " + std::to_string(received.size()) +
                             " bytes for a unique id of " + std::to_string(sizeof(id)));
  std::memcpy(&id, received.data(), sizeof(id));
  return id;
}

using Event = kernels::CudaEvent;

// Makes `waiter` wait, on the device, for the work queued on `producer` so far. The event may be
// recorded again right after: a wait holds on to the record it was queued behind.
void order_after(cudaStream_t waiter, cudaStream_t producer, cudaEvent_t event) {
  DEIT_CUDA_CHECK(cudaEventRecord(event, producer));
  DEIT_CUDA_CHECK(cudaStreamWaitEvent(waiter, event, 0));
}

double elapsed_ms(cudaEvent_t from, cudaEvent_t to) {
  float ms = 0;
  DEIT_CUDA_CHECK(cudaEventElapsedTime(&ms, from, to));
  return ms;
}

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(Device device, const Rendezvous& rendezvous)
      : Communicator(device, rendezvous.rank, rendezvous.world_size, rendezvous.local_rank),
        // NCCL binds a communicator, and CUDA an event, to the device current at creation.
        compute_(compute_stream(select_device(device))),
        communication_(communication_stream(device.index)),
        compute_ready_(cudaEventDisableTiming),
        collective_done_(cudaEventDisableTiming),
        join_(cudaEventDefault),
        drained_(cudaEventDisableTiming),
        timeout_(rendezvous.comm_timeout) {
    const ncclUniqueId id = exchange_unique_id(rendezvous);
    within_deadline("ncclCommInitRank",
                    [&] { DEIT_NCCL_CHECK(ncclCommInitRank(&comm_, world_size(), id, rank())); });
  }

  ~NcclCommunicator() override {
    // Leaving by an exception, or aborted by wait_for_device: queued collectives may wait for
    // ranks that will never join them, and ncclCommDestroy would wait with them; ncclCommAbort
    // does not. If MPI carried the id, it must not be finalised either (see engine/comm_check.h).
    if (std::uncaught_exceptions() > 0 || !comm_) {
      if (comm_) abort_communicator();
#if DEIT_HAVE_MPI
      mpi_record_failure();
#endif
      return;
    }
    within_deadline("ncclCommDestroy", [&] { ncclCommDestroy(comm_); });
  }

  const char* backend() const override { return "nccl"; }

  // NCCL has no barrier: a one-element all-reduce is one, once the stream has drained. Waiting
  // here is also when an asynchronous NCCL failure becomes visible.
  void barrier() override {
    all_reduce_flat(Tensor::zeros({1}, DType::f32, device()), ReduceOp::sum);
    wait_for_device();  // the compute stream waited for the collective
  }

  // Polls rather than blocks, so that a failed collective or a lost peer ends this rank with an
  // error instead of a wait on the GPU that nothing will finish: ncclCommAbort stops NCCL's
  // kernels, and the exception takes the rank out (the launcher then ends the others).
  void wait_for_device() override {
    if (!comm_) throw std::runtime_error(lost_peers_message("an aborted NCCL communicator"));
    DEIT_CUDA_CHECK(cudaEventRecord(drained_, compute_));
    const auto start = std::chrono::steady_clock::now();
    // The pause grows to 100 us: the step's values reach the host at most that late.
    std::chrono::microseconds pause{20};
    for (;;) {
      const cudaError_t status = cudaEventQuery(drained_);
      if (status == cudaSuccess) break;
      if (status != cudaErrorNotReady) DEIT_CUDA_CHECK(status);
      // "Not ready" may stay behind as the thread's last error, which the next launch check
      // (DEIT_CUDA_CHECK_LAUNCH) would report as its own failure.
      cudaGetLastError();
      ncclResult_t async_error = ncclSuccess;
      DEIT_NCCL_CHECK(ncclCommGetAsyncError(comm_, &async_error));
      if (async_error != ncclSuccess && async_error != ncclInProgress)
        abort_and_throw(std::string("a collective failed (") + ncclGetErrorString(async_error) +
                        ": " + ncclGetLastError(comm_) + ")");
      if (std::chrono::steady_clock::now() - start > timeout_)
        abort_and_throw("the queued collectives did not complete in " +
                        std::to_string(timeout_.count()) + " s");
      std::this_thread::sleep_for(pause);
      pause = std::min(pause * 2, std::chrono::microseconds{100});
    }
    ncclResult_t async_error = ncclSuccess;
    DEIT_NCCL_CHECK(ncclCommGetAsyncError(comm_, &async_error));
    DEIT_NCCL_CHECK(async_error);
  }

  void finish_buckets() override {
    const size_t started = started_;
    // Nothing is left started, whatever fails below: the next step starts from bucket 0.
    started_ = 0;
    joined_ = 0;  // until joined below: an earlier step's timing would be read as this one's
    if (started == 0) return;
    DEIT_CUDA_CHECK(cudaEventRecord(join_, compute_));
    // The buckets ran one after another on the communication stream: the end of the last is the
    // end of them all.
    DEIT_CUDA_CHECK(cudaStreamWaitEvent(compute_, bucket_events_[started - 1].done, 0));
    cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
    DEIT_CUDA_CHECK(cudaStreamIsCapturing(compute_, &capture));
    joined_ = capture == cudaStreamCaptureStatusNone ? started : 0;
  }

  std::optional<BucketTiming> last_bucket_timing() const override {
    if (joined_ == 0) return std::nullopt;
    const cudaEvent_t last_done = bucket_events_[joined_ - 1].done;
    DEIT_CUDA_CHECK(cudaEventSynchronize(last_done));
    DEIT_CUDA_CHECK(cudaEventSynchronize(join_));
    BucketTiming timing;
    timing.buckets = static_cast<int>(joined_);
    for (size_t i = 0; i < joined_; ++i)
      timing.busy_ms += elapsed_ms(bucket_events_[i].start, bucket_events_[i].done);
    timing.exposed_ms = std::max(0.0, elapsed_ms(join_, last_done));
    return timing;
  }

 protected:
  void all_reduce_flat(const Tensor& flat, ReduceOp op) override {
    order_after(communication_, compute_, compute_ready_);
    all_reduce_on_communication_stream(flat, op);
    order_after(compute_, communication_, collective_done_);
  }

  void broadcast_flat(const Tensor& flat, int root) override {
    order_after(communication_, compute_, compute_ready_);
    DEIT_NCCL_CHECK(ncclBroadcast(flat.raw_data(), flat.raw_data(),
                                  static_cast<size_t>(flat.numel()), nccl_type(flat.dtype()), root,
                                  comm_, communication_));
    order_after(compute_, communication_, collective_done_);
  }

  void reduce_scatter_flat(const Tensor& flat, const std::vector<int64_t>& counts,
                           ReduceOp op) override {
    order_after(communication_, compute_, compute_ready_);
    reduce_scatter_on_communication_stream(flat, counts, op);
    order_after(compute_, communication_, collective_done_);
  }

  void all_gather_flat(const Tensor& flat, const std::vector<int64_t>& counts) override {
    order_after(communication_, compute_, compute_ready_);
    for_each_run(flat, counts, [&](void* run, size_t count, int owner) {
      DEIT_NCCL_CHECK(
          ncclBroadcast(run, run, count, nccl_type(flat.dtype()), owner, comm_, communication_));
    });
    order_after(compute_, communication_, collective_done_);
  }

  // Packing and unpacking run on the communication stream too: cudaMemcpyAsync there, not
  // Tensor::copy_from, which would queue the copies on the compute stream behind backward.
  void start_bucket(const std::vector<Tensor>& tensors, const Tensor& flat, ReduceOp op,
                    const std::vector<int64_t>& counts) override {
    // A new backward records over the events of the last: their timing is gone.
    if (started_ == 0) joined_ = 0;
    if (started_ == bucket_events_.size()) bucket_events_.emplace_back();
    const BucketEvents& events = bucket_events_[started_++];
    order_after(communication_, compute_, compute_ready_);
    DEIT_CUDA_CHECK(cudaEventRecord(events.start, communication_));
    const auto reduce = [&](const Tensor& f) {
      if (counts.empty())
        all_reduce_on_communication_stream(f, op);
      else
        reduce_scatter_on_communication_stream(f, counts, op);
    };
    if (tensors.size() == 1) {
      reduce(tensors[0].view({tensors[0].numel()}));
    } else {
      copy_bucket(tensors, flat, /*into_flat=*/true);
      reduce(flat);
      copy_bucket(tensors, flat, /*into_flat=*/false);
    }
    DEIT_CUDA_CHECK(cudaEventRecord(events.done, communication_));
  }

 private:
  // Timing events around one bucket's work on the communication stream.
  struct BucketEvents {
    Event start{cudaEventDefault};
    Event done{cudaEventDefault};
  };

  std::string lost_peers_message(const std::string& what) const {
    return detail::lost_peers_message(rank(), world_size(), what, timeout_);
  }

  [[noreturn]] void abort_and_throw(const std::string& what) {
    abort_communicator();
    throw std::runtime_error(lost_peers_message(what));
  }

  void abort_communicator() {
    within_deadline("ncclCommAbort", [&] { ncclCommAbort(comm_); });
    comm_ = nullptr;
  }

  // Runs `call`, which waits for other ranks inside NCCL, under the rendezvous's deadline.
  void within_deadline(const char* call, const std::function<void()>& run) const {
    exit_unless_returns_within(
        timeout_, lost_peers_message(std::string(call) + " did not return in time"), run);
  }

  // Makes `device` current; returns its index.
  static int select_device(Device device) {
    if (!device.is_cuda())
      throw std::invalid_argument("the NCCL communicator moves CUDA tensors, not " + device.str());
    DEIT_CUDA_CHECK(cudaSetDevice(device.index));
    return device.index;
  }

  void all_reduce_on_communication_stream(const Tensor& flat, ReduceOp op) {
    DEIT_NCCL_CHECK(ncclAllReduce(flat.raw_data(), flat.raw_data(),
                                  static_cast<size_t>(flat.numel()), nccl_type(flat.dtype()),
                                  op == ReduceOp::mean ? ncclAvg : ncclSum, comm_,
                                  communication_));
  }

  // Each rank's run of `flat` reduced onto that rank, in place: one group of rooted reduces.
  void reduce_scatter_on_communication_stream(const Tensor& flat,
                                              const std::vector<int64_t>& counts, ReduceOp op) {
    for_each_run(flat, counts, [&](void* run, size_t count, int owner) {
      DEIT_NCCL_CHECK(ncclReduce(run, run, count, nccl_type(flat.dtype()),
                                 op == ReduceOp::mean ? ncclAvg : ncclSum, owner, comm_,
                                 communication_));
    });
  }

  // Calls `collective(run, count, rank)` for each rank's run of `flat` that has elements, all in
  // one NCCL group. A failed call ends the group before its exception leaves.
  static void for_each_run(const Tensor& flat, const std::vector<int64_t>& counts,
                           const std::function<void(void*, size_t, int)>& collective) {
    DEIT_NCCL_CHECK(ncclGroupStart());
    try {
      int64_t offset = 0;
      for (size_t rank = 0; rank < counts.size(); ++rank) {
        if (counts[rank] > 0)
          collective(flat.slice(offset, offset + counts[rank]).raw_data(),
                     static_cast<size_t>(counts[rank]), static_cast<int>(rank));
        offset += counts[rank];
      }
    } catch (...) {
      ncclGroupEnd();
      throw;
    }
    DEIT_NCCL_CHECK(ncclGroupEnd());
  }

  // The tensors into consecutive elements of `flat`, or back, on the communication stream.
  void copy_bucket(const std::vector<Tensor>& tensors, const Tensor& flat, bool into_flat) {
    int64_t offset = 0;
    for (const Tensor& t : tensors) {
      const int64_t n = t.numel();
      void* packed = flat.slice(offset, offset + n).raw_data();
      DEIT_CUDA_CHECK(cudaMemcpyAsync(into_flat ? packed : t.raw_data(),
                                      into_flat ? t.raw_data() : packed, t.nbytes(),
                                      cudaMemcpyDeviceToDevice, communication_));
      offset += n;
    }
  }

  cudaStream_t compute_;  // first: select_device runs before the events are made
  cudaStream_t communication_;
  Event compute_ready_;    // compute stream -> communication stream
  Event collective_done_;  // communication stream -> compute stream, after a plain collective
  Event join_;             // on the compute stream at finish_buckets(): backward's end
  Event drained_;          // on the compute stream: what wait_for_device() waits for
  std::chrono::seconds timeout_;
  std::vector<BucketEvents> bucket_events_;  // one pair per bucket of a backward, reused
  size_t started_ = 0;  // buckets started since the last finish_buckets()
  size_t joined_ = 0;   // buckets the last finish_buckets() joined, if their events are timed
  ncclComm_t comm_ = nullptr;
};

}  // namespace

std::unique_ptr<Communicator> make_nccl_communicator(Device device, const Rendezvous& rendezvous) {
  return std::make_unique<NcclCommunicator>(device, rendezvous);
}

}  // namespace deit::detail
#endif
