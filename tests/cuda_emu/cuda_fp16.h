// fp16 conversions, as tests/cuda_emu emulates them on the CPU.
#pragma once
#include "cuda_emu.h"
