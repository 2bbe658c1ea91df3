/* counters.c — --sketch-memory for the sketch policies (counters.h). */
#include "counters.h"

size_t ap_grid_counter_bytes(const ap_policy_params *p)
{
    return (size_t)p->value[GRID_DEPTH] * p->value[GRID_WIDTH] * sizeof(float);
}

/* The depth stays; the width is what fits. */
ap_status ap_grid_fit_counters(ap_policy_params *p, size_t bytes_per_head, ap_error *err)
{
    const size_t floats = bytes_per_head / sizeof(float), depth = (size_t)p->value[GRID_DEPTH];
    if (floats < depth)
        return ap_error_set(err, AP_ERR_USAGE, "policy %s: %zu bytes a head cannot hold %zu rows of counters",
                            p->name, bytes_per_head, depth);
    if (floats / depth > (1u << 26))
        return ap_error_set(err, AP_ERR_USAGE, "policy %s: %zu bytes a head would need a width over 2^26",
                            p->name, bytes_per_head);
    p->value[GRID_WIDTH] = (int)(floats / depth);
    return AP_OK;
}

size_t ap_race_counter_bytes(const ap_policy_params *p)
{
    return ((size_t)p->value[RACE_ROWS] << p->value[RACE_BITS]) * sizeof(float);
}

/* The rows stay and get the bits that fit; fewer rows of two buckets when
 * even one bit does not. */
ap_status ap_race_fit_counters(ap_policy_params *p, size_t bytes_per_head, ap_error *err)
{
    const size_t floats = bytes_per_head / sizeof(float), rows = (size_t)p->value[RACE_ROWS];
    int bits = 1;
    while (bits < 20 && (rows << (bits + 1)) <= floats) bits++;
    if (bits == 20 && (rows << 21) <= floats)
        return ap_error_set(err, AP_ERR_USAGE, "policy %s: %zu bytes a head would need over 20 bits a row",
                            p->name, bytes_per_head);
    if ((rows << bits) > floats) {
        if (floats < 2)
            return ap_error_set(err, AP_ERR_USAGE, "policy %s: %zu bytes a head cannot hold a row of two buckets",
                                p->name, bytes_per_head);
        p->value[RACE_ROWS] = (int)(floats / 2);
        bits = 1;
    }
    p->value[RACE_BITS] = bits;
    return AP_OK;
}
