/* counters.h — the parameters and --sketch-memory sizing the sketch policies
 * share: a depth x width grid of counters (cms, count_sketch: value[0] is the
 * width, value[1] the depth) or rows x 2^bits (race, race_kde: value[0] the
 * rows, value[1] the bits). Not public. */
#ifndef AP_POLICY_COUNTERS_H
#define AP_POLICY_COUNTERS_H

#include "method.h"

enum { GRID_WIDTH = 0, GRID_DEPTH = 1 };
enum { RACE_ROWS = 0, RACE_BITS = 1 };

#define AP_PARAM_WIDTH {"width", 512, 1, 1 << 26, "counters a row of the sketch"}
#define AP_PARAM_DEPTH {"depth", 4, 1, 64, "rows of the sketch (independent hashes)"}
#define AP_PARAM_RACE_ROWS {"race_rows", 16, 1, 4096, "RACE rows (independent LSH functions)"}
#define AP_PARAM_RACE_BITS {"race_bits", 9, 1, 20, "signed random projections a row (2^bits buckets)"}

size_t ap_grid_counter_bytes(const ap_policy_params *p);
ap_status ap_grid_fit_counters(ap_policy_params *p, size_t bytes_per_head, ap_error *err);
size_t ap_race_counter_bytes(const ap_policy_params *p);
ap_status ap_race_fit_counters(ap_policy_params *p, size_t bytes_per_head, ap_error *err);

#endif
