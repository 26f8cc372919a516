// Every engine op: forward on call, backward recorded on the tape (engine/autograd.h).
#pragma once
#include "engine/ops/attention.h"
#include "engine/ops/elementwise.h"
#include "engine/ops/gelu.h"
#include "engine/ops/layernorm.h"
#include "engine/ops/layerscale.h"
#include "engine/ops/linear.h"
#include "engine/ops/losses.h"
#include "engine/ops/samples.h"
#include "engine/ops/shape.h"
#include "engine/ops/tokens.h"
