/* gaussian.c — seeded Gaussian draws (GSL) for the RACE hyperplanes. */
#include <gsl/gsl_randist.h>
#include <gsl/gsl_rng.h>

#include "sketch.h"

int ap_gaussian_fill(float *x, size_t n, uint64_t seed)
{
    gsl_rng *rng = gsl_rng_alloc(gsl_rng_mt19937);
    if (!rng) return -1;
    gsl_rng_set(rng, (unsigned long)seed);
    for (size_t i = 0; i < n; i++) x[i] = (float)gsl_ran_gaussian_ziggurat(rng, 1.0);
    gsl_rng_free(rng);
    return 0;
}
