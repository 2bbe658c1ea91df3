/* hash.c — seeded 2-universal hashing (Carter & Wegman 1979) over the
 * Mersenne prime 2^61 − 1, and splitmix64 for deriving seeds. */
#include "sketch.h"

static const uint64_t P61 = (1ull << 61) - 1;

uint64_t ap_seed_next(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

void ap_hash_init(ap_hash *h, uint64_t seed)
{
    uint64_t s = seed;
    do h->a = ap_seed_next(&s) & P61; while (h->a == 0 || h->a == P61);
    do h->b = ap_seed_next(&s) & P61; while (h->b == P61);
}

/* x mod (2^61 − 1) for x < 2^122 */
static uint64_t mod_p61(unsigned __int128 x)
{
    uint64_t r = (uint64_t)(x & P61) + (uint64_t)(x >> 61);
    r = (r & P61) + (r >> 61);
    return r >= P61 ? r - P61 : r;
}

uint64_t ap_hash_eval(const ap_hash *h, uint64_t key)
{
    uint64_t k = mod_p61(key);
    return mod_p61((unsigned __int128)h->a * k + h->b);
}
