// Per-row launch parameters given either as an [N] array or as one value for
// every row (array pointer null). A decode-shape call then builds no [N]
// tensors: on a GPU each would be a helper kernel of its own, costing more than
// the draw (issue 3).
#pragma once
#include <stdint.h>

#include "mdsample/philox.h"

namespace mdsample {

// Row r's value: arr[r], or `value` when arr is null.
template <class T>
MDS_HD T per_row(const T* arr, T value, int64_t r) {
  return arr ? arr[r] : value;
}

// The Philox words of row r of a launch `a` (a SampleArgs) in `domain`; a null
// position array means position = r.
template <class Args>
MDS_HD Philox4 row_words(const Args& a, int64_t r, uint32_t domain) {
  return draw_words(uint64_t(per_row(a.seed, a.seed_val, r)), uint64_t(per_row(a.offset, a.offset_val, r)),
                    uint64_t(per_row(a.position, r, r)), domain);
}

}  // namespace mdsample
