/* tokenizer.c — GPT-2 byte-level BPE (Radford et al. 2019), identical to
 * Hugging Face's tokenizers.ByteLevelBPETokenizer on the same files.
 *
 * 1. Split out the literal special token <|endoftext|>.
 * 2. Pre-tokenise each piece with GPT-2's regex (PCRE2, Unicode classes).
 * 3. Map each pre-token's bytes to printable characters (byte_to_unicode),
 *    then apply the ranked merges: repeatedly join the adjacent pair with
 *    the lowest rank, all its occurrences left to right.
 * 4. Look the resulting symbols up in the vocabulary. */
#define PCRE2_CODE_UNIT_WIDTH 8
#include <cjson/cJSON.h>
#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"
#include "model_internal.h"
#include "strmap.h"

static const char GPT2_PATTERN[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";
static const char EOT[] = "<|endoftext|>";
enum { WORD_CACHE_MAX = 1 << 18 };

struct ap_tokenizer {
    ap_strmap vocab;      /* symbol string → id */
    ap_strmap ranks;      /* "left right" → merge rank */
    char **id_bytes;      /* [n_vocab] decoded bytes of each id */
    int *id_len;          /* [n_vocab] */
    int n_vocab;          /* 1 + largest id */
    int eot;              /* id of <|endoftext|> or -1 */
    char byte_sym[256][3];/* UTF-8 of the character standing for each byte */
    int byte_sym_len[256];
    short sym_byte[512];  /* code point → byte, 256 where none */
    pcre2_code *re;
    pcre2_match_data *md;
    ap_strmap cache;      /* pre-token → index into cache_ids */
    int **cache_ids;      /* each: [0] = count, then ids */
    size_t cache_n, cache_cap;
};

/* GPT-2's byte_to_unicode: printable Latin-1 bytes stand for themselves, the
 * rest map to U+0100 onwards in byte order. */
static void build_byte_table(ap_tokenizer *t)
{
    int next = 256;
    for (int cp = 0; cp < 512; cp++) t->sym_byte[cp] = 256;
    for (int b = 0; b < 256; b++) {
        int printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
        int cp = printable ? b : next++;
        t->sym_byte[cp] = (short)b;
        if (cp < 0x80) {
            t->byte_sym[b][0] = (char)cp;
            t->byte_sym_len[b] = 1;
        } else {
            t->byte_sym[b][0] = (char)(0xC0 | cp >> 6);
            t->byte_sym[b][1] = (char)(0x80 | (cp & 0x3F));
            t->byte_sym_len[b] = 2;
        }
    }
}

/* Inverse of byte_to_unicode on one UTF-8 character; -1 if not a byte char. */
static int sym_to_byte(const ap_tokenizer *t, const char *s, int len)
{
    int cp = len == 1 ? (unsigned char)s[0]
           : len == 2 ? ((unsigned char)s[0] & 0x1F) << 6 | ((unsigned char)s[1] & 0x3F) : -1;
    if (cp < 0 || cp >= 512) return -1;
    int b = t->sym_byte[cp];
    return b < 256 && t->byte_sym_len[b] == len ? b : -1;
}

static int utf8_len(unsigned char c)
{
    return c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
}

void ap_tokenizer_free(ap_tokenizer *t)
{
    if (!t) return;
    ap_strmap_free(&t->vocab);
    ap_strmap_free(&t->ranks);
    ap_strmap_free(&t->cache);
    for (int i = 0; i < t->n_vocab; i++) free(t->id_bytes[i]);
    free(t->id_bytes);
    free(t->id_len);
    for (size_t i = 0; i < t->cache_n; i++) free(t->cache_ids[i]);
    free(t->cache_ids);
    pcre2_match_data_free(t->md);
    pcre2_code_free(t->re);
    free(t);
}

static ap_status load_vocab(ap_tokenizer *t, const char *path, ap_error *err)
{
    void *parsed = NULL;
    ap_status st = ap_read_json_object(path, " of token → id", &parsed, err);
    if (st) return st;
    cJSON *root = parsed;
    int count = cJSON_GetArraySize(root), max_id = -1;
    if (ap_strmap_init(&t->vocab, (size_t)count) != 0) goto oom;
    const cJSON *item;
    cJSON_ArrayForEach(item, root)
    {
        if (!cJSON_IsNumber(item) || item->valuedouble < 0 || item->valuedouble >= (1 << 24) ||
            item->valuedouble != (int)item->valuedouble) {
            ap_error_set(err, AP_ERR_INPUT, "%s: token \"%.40s\" has an id that is not an "
                         "integer in 0..16777215", path, item->string);
            cJSON_Delete(root);
            return AP_ERR_INPUT;
        }
        if (ap_strmap_put(&t->vocab, item->string, strlen(item->string), item->valueint) != 0)
            goto oom;
        if (item->valueint > max_id) max_id = item->valueint;
    }
    if (max_id < 0) {
        cJSON_Delete(root);
        return ap_error_set(err, AP_ERR_INPUT, "%s: empty vocabulary", path);
    }
    t->n_vocab = max_id + 1;
    t->id_bytes = calloc((size_t)t->n_vocab, sizeof *t->id_bytes);
    t->id_len = calloc((size_t)t->n_vocab, sizeof *t->id_len);
    if (!t->id_bytes || !t->id_len) goto oom;
    cJSON_ArrayForEach(item, root)
    {
        const char *s = item->string;
        size_t len = strlen(s), o = 0;
        char *bytes = malloc(len + 1);
        if (!bytes) goto oom;
        free(t->id_bytes[item->valueint]); /* a repeated id: the last one wins, as in Python */
        t->id_bytes[item->valueint] = bytes;
        if (strcmp(s, EOT) == 0) {
            t->eot = item->valueint;
            memcpy(bytes, s, len);
            o = len;
        } else {
            for (size_t i = 0; i < len;) {
                int cl = utf8_len((unsigned char)s[i]);
                int b = i + (size_t)cl <= len ? sym_to_byte(t, s + i, cl) : -1;
                if (b < 0) { /* not a byte-level symbol (added token): keep its text */
                    memcpy(bytes + o, s + i, i + (size_t)cl <= len ? (size_t)cl : len - i);
                    o += i + (size_t)cl <= len ? (size_t)cl : len - i;
                } else {
                    bytes[o++] = (char)b;
                }
                i += (size_t)cl;
            }
        }
        t->id_len[item->valueint] = (int)o;
    }
    cJSON_Delete(root);
    return AP_OK;
oom:
    cJSON_Delete(root);
    return ap_error_set(err, AP_ERR_RUNTIME, "%s: out of memory", path);
}

static ap_status load_merges(ap_tokenizer *t, const char *path, ap_error *err)
{
    char *text;
    size_t n;
    ap_status st = ap_read_file(path, &text, &n, err);
    if (st) return st;
    if (ap_strmap_init(&t->ranks, 65536) != 0) {
        free(text);
        return ap_error_set(err, AP_ERR_RUNTIME, "out of memory");
    }
    int rank = 0, line_no = 0;
    for (char *line = text; line < text + n;) {
        char *end = memchr(line, '\n', (size_t)(text + n - line));
        if (!end) end = text + n;
        size_t len = (size_t)(end - line);
        if (len && line[len - 1] == '\r') len--;
        line_no++;
        if (len && !(line_no == 1 && strncmp(line, "#version", 8) == 0)) {
            char *sp = memchr(line, ' ', len);
            if (!sp || sp == line || sp == line + len - 1 || memchr(sp + 1, ' ', len - (size_t)(sp - line) - 1)) {
                free(text);
                return ap_error_set(err, AP_ERR_INPUT,
                                    "%s:%d: a merge line is two symbols separated by one space",
                                    path, line_no);
            }
            /* The first occurrence of a pair keeps its rank, as in tokenizers. */
            int old;
            if (!ap_strmap_get(&t->ranks, line, len, &old) &&
                ap_strmap_put(&t->ranks, line, len, rank) != 0) {
                free(text);
                return ap_error_set(err, AP_ERR_RUNTIME, "out of memory");
            }
            rank++;
        }
        line = end + 1;
    }
    free(text);
    return AP_OK;
}

ap_status ap_tokenizer_load(const char *vocab_json, const char *merges, ap_tokenizer **out,
                            ap_error *err)
{
    *out = NULL;
    ap_tokenizer *t = calloc(1, sizeof *t);
    if (!t) return ap_error_set(err, AP_ERR_RUNTIME, "out of memory");
    t->eot = -1;
    build_byte_table(t);
    ap_status st;
    if ((st = load_vocab(t, vocab_json, err)) || (st = load_merges(t, merges, err))) {
        ap_tokenizer_free(t);
        return st;
    }
    for (int b = 0; b < 256; b++) {
        int id;
        if (!ap_strmap_get(&t->vocab, t->byte_sym[b], (size_t)t->byte_sym_len[b], &id)) {
            ap_tokenizer_free(t);
            return ap_error_set(err, AP_ERR_INPUT,
                                "%s: byte 0x%02x has no token (a byte-level vocabulary has all 256)",
                                vocab_json, b);
        }
    }
    int code;
    PCRE2_SIZE off;
    t->re = pcre2_compile((PCRE2_SPTR)GPT2_PATTERN, PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP,
                          &code, &off, NULL);
    if (t->re) {
        pcre2_jit_compile(t->re, PCRE2_JIT_COMPLETE); /* optional speed-up */
        t->md = pcre2_match_data_create_from_pattern(t->re, NULL);
    }
    if (ap_strmap_init(&t->cache, 1024) != 0 || !t->re || !t->md) {
        ap_tokenizer_free(t);
        return ap_error_set(err, AP_ERR_RUNTIME, "cannot compile the GPT-2 pattern (error %d)", code);
    }
    *out = t;
    return AP_OK;
}

static int file_exists(const char *p)
{
    FILE *f = fopen(p, "rb");
    if (f) fclose(f);
    return f != NULL;
}

ap_status ap_tokenizer_load_dir(const char *dir, ap_tokenizer **out, ap_error *err)
{
    char v[1100], m[1100];
    snprintf(v, sizeof v, "%s/vocab.json", dir);
    snprintf(m, sizeof m, "%s/merges.txt", dir);
    if (file_exists(v) || file_exists(m)) return ap_tokenizer_load(v, m, out, err);
    snprintf(v, sizeof v, "%s/encoder.json", dir);
    snprintf(m, sizeof m, "%s/vocab.bpe", dir);
    if (file_exists(v) || file_exists(m)) return ap_tokenizer_load(v, m, out, err);
    *out = NULL;
    return ap_error_set(err, AP_ERR_INPUT,
                        "%s: no tokenizer files (accepted: vocab.json + merges.txt, or encoder.json + "
                        "vocab.bpe)",
                        dir);
}

int ap_tokenizer_vocab_size(const ap_tokenizer *t) { return t->n_vocab; }
int ap_tokenizer_eot(const ap_tokenizer *t) { return t->eot; }

/* ---- encoding ----------------------------------------------------------- */

typedef struct {
    int *ids;
    size_t n, cap;
} id_vec;

static int vec_push(id_vec *v, int id)
{
    if (v->n == v->cap) {
        size_t cap = v->cap ? v->cap * 2 : 256;
        int *p = realloc(v->ids, cap * sizeof *p);
        if (!p) return -1;
        v->ids = p;
        v->cap = cap;
    }
    v->ids[v->n++] = id;
    return 0;
}

/* Replaces ill-formed UTF-8 with U+FFFD per maximal subpart (Unicode §3.9,
 * what Python's "replace" error handler does). out holds 3 * n bytes. */
static size_t utf8_sanitize(const unsigned char *s, size_t n, unsigned char *out)
{
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        unsigned char c = s[i];
        int need = c < 0x80 ? 0 : c >= 0xC2 && c <= 0xDF ? 1 : c >= 0xE0 && c <= 0xEF ? 2
                 : c >= 0xF0 && c <= 0xF4 ? 3 : -1;
        if (need == 0) {
            out[o++] = c;
            i++;
            continue;
        }
        size_t k = 1;
        if (need > 0) {
            unsigned char lo = 0x80, hi = 0xBF;
            if (c == 0xE0) lo = 0xA0;
            if (c == 0xED) hi = 0x9F;
            if (c == 0xF0) lo = 0x90;
            if (c == 0xF4) hi = 0x8F;
            for (; k <= (size_t)need && i + k < n; k++) {
                unsigned char d = s[i + k];
                if (d < (k == 1 ? lo : 0x80) || d > (k == 1 ? hi : 0xBF)) break;
            }
            if (k == (size_t)need + 1) {
                memcpy(out + o, s + i, k);
                o += k;
                i += k;
                continue;
            }
        }
        out[o++] = 0xEF; out[o++] = 0xBF; out[o++] = 0xBD;
        i += k;
    }
    return o;
}

/* BPE of one pre-token (raw bytes) appended to v. */
static int bpe_word(const ap_tokenizer *t, const unsigned char *w, size_t n, id_vec *v,
                    char *sym, int *start, int *len, char *key)
{
    /* Symbols as (start, len) into sym, the byte_to_unicode text of w. */
    int ns = 0, o = 0;
    for (size_t i = 0; i < n; i++) {
        start[ns] = o;
        len[ns] = t->byte_sym_len[w[i]];
        memcpy(sym + o, t->byte_sym[w[i]], (size_t)len[ns]);
        o += len[ns++];
    }
    for (;;) {
        int best = -1, best_rank = 0;
        for (int i = 0; i + 1 < ns; i++) {
            memcpy(key, sym + start[i], (size_t)len[i]);
            key[len[i]] = ' ';
            memcpy(key + len[i] + 1, sym + start[i + 1], (size_t)len[i + 1]);
            int r;
            if (ap_strmap_get(&t->ranks, key, (size_t)(len[i] + 1 + len[i + 1]), &r) &&
                (best < 0 || r < best_rank)) {
                best = i;
                best_rank = r;
            }
        }
        if (best < 0) break;
        /* Merge every occurrence of the best pair, left to right. */
        /* sym never changes, so the pair's text stays where it was found. */
        const int bl = len[best], br = len[best + 1];
        const char *left = sym + start[best], *right = sym + start[best + 1];
        int m = 0;
        for (int i = 0; i < ns; i++) {
            if (i + 1 < ns && len[i] == bl && len[i + 1] == br &&
                memcmp(sym + start[i], left, (size_t)bl) == 0 &&
                memcmp(sym + start[i + 1], right, (size_t)br) == 0) {
                start[m] = start[i];
                len[m++] = bl + br; /* the two are adjacent in sym */
                i++;
            } else {
                start[m] = start[i];
                len[m++] = len[i];
            }
        }
        ns = m;
    }
    for (int i = 0; i < ns; i++) {
        int id;
        if (!ap_strmap_get(&t->vocab, sym + start[i], (size_t)len[i], &id)) return -2;
        if (vec_push(v, id) != 0) return -1;
    }
    return 0;
}

/* Encodes one pre-token through the cache. */
static int encode_word(ap_tokenizer *t, const unsigned char *w, size_t n, id_vec *v, char *scratch,
                       int *start, int *len, char *key)
{
    int idx;
    if (ap_strmap_get(&t->cache, (const char *)w, n, &idx)) {
        const int *ids = t->cache_ids[idx];
        for (int i = 1; i <= ids[0]; i++)
            if (vec_push(v, ids[i]) != 0) return -1;
        return 0;
    }
    size_t before = v->n;
    int rc = bpe_word(t, w, n, v, scratch, start, len, key);
    if (rc != 0 || t->cache_n >= WORD_CACHE_MAX) return rc;
    if (t->cache_n == t->cache_cap) {
        size_t cap = t->cache_cap ? t->cache_cap * 2 : 1024;
        int **p = realloc(t->cache_ids, cap * sizeof *p);
        if (!p) return 0; /* the cache is an optimisation only */
        t->cache_ids = p;
        t->cache_cap = cap;
    }
    int *ids = malloc((v->n - before + 1) * sizeof *ids);
    if (!ids) return 0;
    ids[0] = (int)(v->n - before);
    memcpy(ids + 1, v->ids + before, (v->n - before) * sizeof *ids);
    if (ap_strmap_put(&t->cache, (const char *)w, n, (int)t->cache_n) != 0) {
        free(ids);
        return 0;
    }
    t->cache_ids[t->cache_n++] = ids;
    return 0;
}

/* Pre-tokenises text[0..n) (valid UTF-8, no special tokens) and encodes it. */
static ap_status encode_piece(ap_tokenizer *t, const unsigned char *text, size_t n, id_vec *v,
                              ap_error *err)
{
    size_t pos = 0;
    while (pos < n) {
        /* The text was made valid UTF-8 above; checking it again on every call
         * would make tokenizing quadratic in its length. */
        int rc = pcre2_match(t->re, text, n, pos, PCRE2_NO_UTF_CHECK, t->md, NULL);
        if (rc < 0) {
            if (rc == PCRE2_ERROR_NOMATCH) break; /* cannot happen: \s+ | the rest match all */
            return ap_error_set(err, AP_ERR_RUNTIME, "tokenizer regex failed (PCRE2 error %d)", rc);
        }
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(t->md);
        size_t b = ov[0], e = ov[1];
        if (e <= b) { /* the pattern has no empty alternatives; stay safe */
            pos = b + 1;
            continue;
        }
        size_t wn = e - b;
        /* Scratch sized for this word: each byte becomes ≤ 2 bytes of symbol. */
        char *scratch = malloc(2 * wn + 1), *key = malloc(4 * wn + 2);
        int *start = malloc(wn * sizeof *start), *len = malloc(wn * sizeof *len);
        int r = -1;
        if (scratch && key && start && len) r = encode_word(t, text + b, wn, v, scratch, start, len, key);
        free(scratch); free(key); free(start); free(len);
        if (r == -2)
            return ap_error_set(err, AP_ERR_INPUT, "a BPE symbol is missing from the vocabulary");
        if (r != 0) return ap_error_set(err, AP_ERR_RUNTIME, "out of memory while tokenizing");
        pos = e;
    }
    return AP_OK;
}

ap_status ap_tokenizer_encode(ap_tokenizer *t, const char *text, size_t n, int **ids, size_t *n_ids,
                              ap_error *err)
{
    *ids = NULL;
    *n_ids = 0;
    unsigned char *clean = malloc(3 * n + 1);
    if (!clean) return ap_error_set(err, AP_ERR_RUNTIME, "out of memory tokenizing %zu bytes", n);
    size_t m = utf8_sanitize((const unsigned char *)text, n, clean);
    id_vec v = {0};
    ap_status st = AP_OK;
    size_t pos = 0;
    const size_t eot_len = sizeof EOT - 1;
    while (pos < m && st == AP_OK) {
        size_t end = m;
        if (t->eot >= 0) {
            for (size_t i = pos; i + eot_len <= m; i++)
                if (clean[i] == '<' && memcmp(clean + i, EOT, eot_len) == 0) {
                    end = i;
                    break;
                }
        }
        st = encode_piece(t, clean + pos, end - pos, &v, err);
        if (st == AP_OK && end < m) {
            if (vec_push(&v, t->eot) != 0) st = ap_error_set(err, AP_ERR_RUNTIME, "out of memory");
            end += eot_len;
        }
        pos = end;
    }
    free(clean);
    if (st) {
        free(v.ids);
        return st;
    }
    *ids = v.ids ? v.ids : malloc(sizeof(int));
    if (!*ids) return ap_error_set(err, AP_ERR_RUNTIME, "out of memory");
    *n_ids = v.n;
    return AP_OK;
}

ap_status ap_tokenizer_decode(const ap_tokenizer *t, const int *ids, size_t n_ids, char **text,
                              size_t *n_text, ap_error *err)
{
    size_t total = 0;
    for (size_t i = 0; i < n_ids; i++) {
        if (ids[i] < 0 || ids[i] >= t->n_vocab || !t->id_bytes[ids[i]])
            return ap_error_set(err, AP_ERR_INPUT, "token id %d at index %zu is not in the "
                                "vocabulary (0..%d)", ids[i], i, t->n_vocab - 1);
        total += (size_t)t->id_len[ids[i]];
    }
    char *out = malloc(total + 1);
    if (!out) return ap_error_set(err, AP_ERR_RUNTIME, "out of memory");
    size_t o = 0;
    for (size_t i = 0; i < n_ids; i++) {
        memcpy(out + o, t->id_bytes[ids[i]], (size_t)t->id_len[ids[i]]);
        o += (size_t)t->id_len[ids[i]];
    }
    out[o] = '\0';
    *text = out;
    *n_text = o;
    return AP_OK;
}

/* PCRE2's version (engine.c). */
void ap_tokenizer_pcre2_version(char *buf, size_t n)
{
    if (n > 0) buf[0] = '\0';
    pcre2_config(PCRE2_CONFIG_VERSION, buf); /* at most 24 code units */
}
