/* registry.c — every policy attnprobe knows, in --types all order. The
 * command line's flags and help, the summary's parameters, batch grids and
 * the benchmarks all read this table (docs/policies.md). */
#include "method.h"

extern const ap_policy_method ap_method_full, ap_method_window, ap_method_sink, ap_method_random,
    ap_method_h2o, ap_method_tova, ap_method_cms, ap_method_count_sketch, ap_method_race,
    ap_method_race_kde, ap_method_knorm, ap_method_snapkv, ap_method_quest;

const ap_policy_method *const ap_policy_registry[] = {
    &ap_method_full,   &ap_method_window, &ap_method_sink,         &ap_method_random,
    &ap_method_h2o,    &ap_method_tova,   &ap_method_cms,          &ap_method_count_sketch,
    &ap_method_race,   &ap_method_race_kde, &ap_method_knorm,      &ap_method_snapkv,
    &ap_method_quest,
};
const int ap_policy_registry_size = sizeof ap_policy_registry / sizeof ap_policy_registry[0];
