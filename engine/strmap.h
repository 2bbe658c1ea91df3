/* strmap.h — string → int hash map (open addressing, linear probing).
 * For the tokenizer's vocabulary, merge ranks and word cache; keys are
 * copied into one arena owned by the map. Not public outside engine/. */
#ifndef AP_STRMAP_H
#define AP_STRMAP_H

#include <stddef.h>

typedef struct {
    size_t *offsets; /* [cap] key offset + 1 in arena; 0 = empty */
    int *values;     /* [cap] */
    size_t cap, count;
    char *arena;
    size_t arena_used, arena_cap;
} ap_strmap;

int ap_strmap_init(ap_strmap *m, size_t expected);
void ap_strmap_free(ap_strmap *m);
/* Returns 0 on success, -1 when out of memory. Overwrites an existing key. */
int ap_strmap_put(ap_strmap *m, const char *key, size_t len, int value);
/* Returns 1 and sets *value when found, 0 otherwise. */
int ap_strmap_get(const ap_strmap *m, const char *key, size_t len, int *value);

#endif
