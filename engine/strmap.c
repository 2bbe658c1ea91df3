#include "strmap.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Keys are stored as u32 length + bytes in the arena. */
static uint64_t hash(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return h;
}

static const char *key_at(const ap_strmap *m, size_t off, uint32_t *len)
{
    memcpy(len, m->arena + off - 1, sizeof *len);
    return m->arena + off - 1 + sizeof *len;
}

int ap_strmap_init(ap_strmap *m, size_t expected)
{
    memset(m, 0, sizeof *m);
    m->cap = 16;
    while (m->cap < expected * 2) m->cap *= 2;
    m->offsets = calloc(m->cap, sizeof *m->offsets);
    m->values = calloc(m->cap, sizeof *m->values);
    m->arena_cap = 1024;
    m->arena = malloc(m->arena_cap);
    if (!m->offsets || !m->values || !m->arena) {
        ap_strmap_free(m);
        return -1;
    }
    return 0;
}

void ap_strmap_free(ap_strmap *m)
{
    free(m->offsets);
    free(m->values);
    free(m->arena);
    memset(m, 0, sizeof *m);
}

static size_t find_slot(const ap_strmap *m, const char *key, size_t len, int *found)
{
    size_t i = hash(key, len) & (m->cap - 1);
    for (;; i = (i + 1) & (m->cap - 1)) {
        if (!m->offsets[i]) {
            *found = 0;
            return i;
        }
        uint32_t klen;
        const char *k = key_at(m, m->offsets[i], &klen);
        if (klen == len && memcmp(k, key, len) == 0) {
            *found = 1;
            return i;
        }
    }
}

static int grow(ap_strmap *m)
{
    ap_strmap bigger = *m;
    bigger.cap = m->cap * 2;
    bigger.offsets = calloc(bigger.cap, sizeof *bigger.offsets);
    bigger.values = calloc(bigger.cap, sizeof *bigger.values);
    if (!bigger.offsets || !bigger.values) {
        free(bigger.offsets);
        free(bigger.values);
        return -1;
    }
    for (size_t i = 0; i < m->cap; i++) {
        if (!m->offsets[i]) continue;
        uint32_t klen;
        const char *k = key_at(m, m->offsets[i], &klen);
        int found;
        size_t j = find_slot(&bigger, k, klen, &found);
        bigger.offsets[j] = m->offsets[i];
        bigger.values[j] = m->values[i];
    }
    free(m->offsets);
    free(m->values);
    *m = bigger;
    return 0;
}

int ap_strmap_put(ap_strmap *m, const char *key, size_t len, int value)
{
    if (len > UINT32_MAX) return -1;
    if ((m->count + 1) * 2 > m->cap && grow(m) != 0) return -1;
    int found;
    size_t i = find_slot(m, key, len, &found);
    if (found) {
        m->values[i] = value;
        return 0;
    }
    size_t need = sizeof(uint32_t) + len;
    if (m->arena_used + need > m->arena_cap) {
        size_t cap = m->arena_cap * 2;
        while (cap < m->arena_used + need) cap *= 2;
        char *a = realloc(m->arena, cap);
        if (!a) return -1;
        m->arena = a;
        m->arena_cap = cap;
    }
    uint32_t len32 = (uint32_t)len;
    memcpy(m->arena + m->arena_used, &len32, sizeof len32);
    memcpy(m->arena + m->arena_used + sizeof len32, key, len);
    m->offsets[i] = m->arena_used + 1;
    m->arena_used += need;
    m->values[i] = value;
    m->count++;
    return 0;
}

int ap_strmap_get(const ap_strmap *m, const char *key, size_t len, int *value)
{
    int found;
    size_t i = find_slot(m, key, len, &found);
    if (found) *value = m->values[i];
    return found;
}
