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

// Position i of a uniforms launch `a` (a UniformArgs, uniforms.h: one seed and one offset, each a
// value or a pointer to one): its two centred uniforms, words 0-1 into out[i] and words 2-3 into
// out[n + i]. The CPU loop and the CUDA kernel both run this.
template <class Args>
MDS_HD void write_uniform_pair(const Args& a, int64_t i) {
  const Philox4 w = draw_words(uint64_t(per_row(a.seed, a.seed_val, 0)), uint64_t(per_row(a.offset, a.offset_val, 0)),
                               uint64_t(a.position[i]), a.domain);
  a.out[i] = uniform52(w.w[0], w.w[1]);
  a.out[a.n + i] = uniform52(w.w[2], w.w[3]);
}

// Whether row r of a sampling launch is drawn, and what it returns when it is
// not: an inactive row (`active`) returns its fallback (-1 without one); in
// unmask_step mode (`x`) a row is drawn only when x[r] is the mask and its
// reveal coin (Philox domain REVEAL, words 0-1) falls below reveal_prob, and
// otherwise returns x[r]. A row that is not drawn must not read its logits.
struct RowGate {
  bool drawn;
  int64_t passthrough;
};

template <class Args>
MDS_HD RowGate row_gate(const Args& a, int64_t r) {
  RowGate g{a.active ? a.active[r] != 0 : true, a.fallback ? a.fallback[r] : -1};
  if (a.x) {
    g.passthrough = a.x[r];
    g.drawn = false;
    if (g.passthrough == a.mask_id) {
      const Philox4 coin = row_words(a, r, kDomainReveal);
      g.drawn = uniform52(coin.w[0], coin.w[1]) < per_row(a.reveal_prob, a.reveal_prob_val, r);
    }
  }
  return g;
}

}  // namespace mdsample
