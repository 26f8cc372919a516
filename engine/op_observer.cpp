#include "engine/op_observer.h"

namespace deit {

namespace {
thread_local OpObserver* t_observer = nullptr;
}  // namespace

OpObserver* op_observer() { return t_observer; }

ObserveOps::ObserveOps(OpObserver& observer) : previous_(t_observer) { t_observer = &observer; }
ObserveOps::~ObserveOps() { t_observer = previous_; }

}  // namespace deit
