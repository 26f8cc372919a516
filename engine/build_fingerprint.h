// Which deit build this is. Two builds may differ in the collectives they call, so the processes
// of a job compare their fingerprints before anything else (train/rank_agreement.h:
// agree_on_build), and `deit --version` prints it. Defined in a file the build writes
// (cmake/DeitBuildFingerprint.cmake).
#pragma once

namespace deit {

// 16 hex digits: a hash of the sources of the deit binary (engine/, kernels/, model/, data/,
// train/, bench/, apps/ and the CMake files) and of build_features(). The same for two builds of
// one source tree, in whatever folder; another after an edit to any of those sources.
const char* build_fingerprint();

// The optional parts built in, "cpu" or "cuda" first: e.g. "cuda, cudnn, nccl, mpi, cblas".
const char* build_features();

}  // namespace deit
