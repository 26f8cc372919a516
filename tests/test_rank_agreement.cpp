// train/rank_agreement.h on three ranks without MPI: each check makes one all-reduce, so a job is
// played one rank at a time, first recording what each rank sends, then handing each the sum.
// Three ranks give what two cannot: a rank that agrees with rank 0 while another differs. Two
// real ranks: test_distributed_train.cpp.
#include <catch2/catch.hpp>
#include <cstdint>
#include <functional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "data/xxhash64.h"
#include "engine/communicator.h"
#include "engine/tensor.h"
#include "train/rank_agreement.h"

using namespace deit;

namespace {

struct Recorded {};  // ends a rank's call once its all-reduce's values are recorded

// Rank `rank` of sent->size(). With `record`, its all-reduce keeps its values in (*sent)[rank] and
// ends the call; otherwise it leaves the sum of every rank's recorded values.
class PlayedRank final : public Communicator {
 public:
  PlayedRank(int rank, std::vector<std::vector<double>>* sent, bool record)
      : Communicator(Device::cpu(), rank, static_cast<int>(sent->size()), rank),
        sent_(sent),
        record_(record) {}
  const char* backend() const override { return "played"; }
  void barrier() override { FAIL("barrier"); }

 protected:
  void all_reduce_flat(const Tensor& flat, ReduceOp op) override {
    REQUIRE(op == ReduceOp::sum);
    REQUIRE(flat.dtype() == DType::f64);
    double* values = flat.data<double>();
    const auto n = static_cast<size_t>(flat.numel());
    if (record_) {
      (*sent_)[rank()].assign(values, values + n);
      throw Recorded{};
    }
    for (size_t i = 0; i < n; ++i) {
      values[i] = 0;
      for (const std::vector<double>& rank_values : *sent_) {
        REQUIRE(rank_values.size() == n);  // every rank made the same collective
        values[i] += rank_values[i];
      }
    }
  }
  void broadcast_flat(const Tensor&, int) override { FAIL("broadcast"); }
  void reduce_scatter_flat(const Tensor&, const std::vector<int64_t>&, ReduceOp) override {
    FAIL("reduce_scatter");
  }
  void all_gather_flat(const Tensor&, const std::vector<int64_t>&) override { FAIL("all_gather"); }

 private:
  std::vector<std::vector<double>>* sent_;
  bool record_;
};

// What `check` throws on each of `ranks` ranks ("" where it returns), and the number of values
// each rank's one all-reduce sent.
struct Played {
  std::vector<std::string> errors;
  std::vector<size_t> sent;
};
Played play(int ranks, const std::function<void(Communicator&)>& check) {
  std::vector<std::vector<double>> sent(ranks);
  for (int r = 0; r < ranks; ++r) {
    PlayedRank comm(r, &sent, /*record=*/true);
    CHECK_THROWS_AS(check(comm), Recorded);
  }
  Played played;
  for (int r = 0; r < ranks; ++r) {
    PlayedRank comm(r, &sent, /*record=*/false);
    played.sent.push_back(sent[r].size());
    try {
      check(comm);
      played.errors.emplace_back();
    } catch (const std::invalid_argument& e) {
      played.errors.emplace_back(e.what());
    }
  }
  return played;
}

}  // namespace

TEST_CASE("the build check on three ranks names rank 0's build, and each rank's own that differs",
          "[comm]") {
  const std::string ours = "0123456789abcdef";
  // Every build sends 48 doubles in it, whatever else it changes (train/rank_agreement.h).
  const Played same =
      play(3, [&](Communicator& comm) { train::agree_on_build(comm, ours, "run"); });
  CHECK(same.errors == std::vector<std::string>(3, ""));
  CHECK(same.sent == std::vector<size_t>(3, 48));

  // Rank 2's build differs in its first character only; rank 1 runs rank 0's.
  const std::string other = "f123456789abcdef";
  const Played differ = play(3, [&](Communicator& comm) {
    train::agree_on_build(comm, comm.rank() == 2 ? other : ours, "benchmark");
  });
  const std::string head =
      "the 3 processes of this benchmark differ in the deit build (rank 0 runs build " + ours;
  const std::string tail = "): every process must run the same deit build";
  CHECK_THAT(differ.errors[0], Catch::StartsWith(head + tail));
  CHECK_THAT(differ.errors[1], Catch::StartsWith(head + ", as does this process" + tail));
  CHECK_THAT(differ.errors[2], Catch::StartsWith(head + ", this process build " + other + tail));
}

TEST_CASE("ranks agree on an entry only where its values are the same on all three, to the byte",
          "[comm]") {
  // A value whose hash (data/xxhash64.h) ends in the same byte as "base"'s: every bit of the hash
  // is compared, not only part of it.
  const auto hash = [](const std::string& s) { return data::xxhash64(s.data(), s.size()); };
  std::string same_low_byte;
  for (int i = 0; same_low_byte.empty(); ++i) {
    const std::string v = "value " + std::to_string(i);
    if ((hash(v) & 0xff) == (hash("base") & 0xff) && hash(v) != hash("base")) same_low_byte = v;
  }
  // Rank 2 differs in b (in the first character only), d (as above) and e, the last entry.
  const auto entries_of = [&](int rank) {
    const bool odd = rank == 2;
    return std::vector<std::pair<std::string, std::string>>{{"a", "same"},
                                                            {"b", odd ? "2x" : "1x"},
                                                            {"c", "base"},
                                                            {"d", odd ? same_low_byte : "base"},
                                                            {"e", odd ? "" : "last"}};
  };
  const Played played = play(3, [&](Communicator& comm) {
    const std::vector<std::string> differ =
        train::entries_that_differ(comm, entries_of(comm.rank()));
    if (!differ.empty()) {
      std::string list;
      for (const std::string& name : differ) list += name + ";";
      throw std::invalid_argument(list);
    }
  });
  // Every rank names the same entries, each once, in their order.
  CHECK(played.errors == std::vector<std::string>(3, "b;d;e;"));

  // require_agreement says so on every rank, with the job's word and its advice.
  const Played required = play(3, [&](Communicator& comm) {
    train::require_agreement(comm, entries_of(comm.rank()), "benchmark", "use one command");
  });
  CHECK(required.errors ==
        std::vector<std::string>(
            3, "the 3 processes of this benchmark differ in b, d, e: use one command"));
  // Where all agree, nothing is thrown.
  const Played agreed = play(3, [&](Communicator& comm) {
    train::require_agreement(comm, entries_of(0), "run", "use one command");
  });
  CHECK(agreed.errors == std::vector<std::string>(3, ""));
}
