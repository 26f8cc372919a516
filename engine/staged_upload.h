// Small host-to-device uploads the host does not wait for.
//
// Tensor::copy_from waits for a copy from host memory, because the host side may be freed as soon
// as it returns. Inside a training step that wait would stop the host from queuing the step ahead
// of the device (the drop-path keep scales are drawn on the host every forward, model/vit.cpp).
// Here the bytes are first copied into one of a few pinned slots, and the device copy is queued
// from there on the compute stream; a slot is refilled only after an event says its previous copy
// is done, which with many slots is long since.
#pragma once
#include "engine/tensor.h"

namespace deit {

// `host` (a CPU tensor) on `device`, with the same shape and dtype. On a CUDA device: queued on
// its compute stream without a wait when it fits a slot (256 KiB), else as Tensor::to (which
// waits). Throws while the compute stream is being captured into a graph: a replay would send
// whatever the slot holds by then.
Tensor upload_without_waiting(const Tensor& host, Device device);

}  // namespace deit
