// The CUDA runtime, as tests/cuda_emu emulates it on the CPU.
#pragma once
#include "cuda_emu.h"
