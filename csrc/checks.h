// Argument checks whose messages name the offending tensor.
#pragma once
#include <torch/types.h>

#define CLIPPO_CHECK_DTYPE(x, dt) \
  TORCH_CHECK((x).scalar_type() == (dt), #x " must have dtype " #dt ", got ", (x).scalar_type())
#define CLIPPO_CHECK_CPU(x) TORCH_CHECK((x).device().is_cpu(), #x " must be a CPU tensor")
#define CLIPPO_CHECK_DIM(x, d) \
  TORCH_CHECK((x).dim() == (d), #x " must have ", d, " dimensions, got shape ", (x).sizes())
