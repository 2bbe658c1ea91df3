/* samples.c — token windows from a text: documents at blank lines, packed
 * into windows that begin with <|endoftext|>, as GPT-2's documents do. */
#include <stdlib.h>
#include <string.h>

#include "tracer.h"

void ap_samples_free(ap_samples *s)
{
    for (int i = 0; s->ids && i < s->n; i++) free(s->ids[i]);
    free(s->ids);
    free(s->len);
    memset(s, 0, sizeof *s);
}

/* Next document of text starting at *pos: [begin, end) without the blank
 * line(s) that end it; returns 0 when none is left. */
static int next_document(const char *text, size_t n, size_t *pos, size_t *begin, size_t *end)
{
    size_t i = *pos;
    while (i < n && (text[i] == '\n' || text[i] == '\r')) i++;
    if (i >= n) return 0;
    *begin = i;
    for (; i < n; i++) {
        if (text[i] != '\n') continue;
        size_t j = i + 1; /* a blank line: only spaces, tabs or \r before the next \n */
        while (j < n && (text[j] == ' ' || text[j] == '\t' || text[j] == '\r')) j++;
        if (j >= n || text[j] == '\n') break;
    }
    *end = i;
    *pos = i;
    return 1;
}

ap_status ap_samples_make(ap_tokenizer *tok, const char *text, size_t n_text, int n_samples,
                          int max_length, int min_length, ap_samples *out, ap_error *err)
{
    memset(out, 0, sizeof *out);
    out->len = calloc((size_t)n_samples, sizeof *out->len);
    out->ids = calloc((size_t)n_samples, sizeof *out->ids);
    int *sep = NULL, *window = malloc((size_t)max_length * sizeof *window);
    size_t n_sep = 0;
    ap_status st = AP_OK;
    if (!out->len || !out->ids || !window) {
        st = ap_error_set(err, AP_ERR_RUNTIME, "out of memory");
        goto done;
    }
    if ((st = ap_tokenizer_encode(tok, "\n\n", 2, &sep, &n_sep, err))) goto done;
    const int eot = ap_tokenizer_eot(tok);
    size_t pos = 0, begin, end;
    int fill = 0;
    int more = 1;
    while (out->n < n_samples && more) {
        more = next_document(text, n_text, &pos, &begin, &end);
        if (more) {
            out->documents++;
            int *ids;
            size_t n_ids;
            if ((st = ap_tokenizer_encode(tok, text + begin, end - begin, &ids, &n_ids, err))) goto done;
            if (fill == 0 && eot >= 0) window[fill++] = eot;
            else if (fill > 0)
                for (size_t i = 0; i < n_sep && fill < max_length; i++) window[fill++] = sep[i];
            for (size_t i = 0; i < n_ids && fill < max_length; i++) window[fill++] = ids[i];
            free(ids);
            if (fill < max_length) continue; /* pack the next document too */
        }
        /* a full window, or the text's last one */
        if (fill >= min_length && fill > 0) {
            out->ids[out->n] = malloc((size_t)fill * sizeof **out->ids);
            if (!out->ids[out->n]) {
                st = ap_error_set(err, AP_ERR_RUNTIME, "out of memory");
                goto done;
            }
            memcpy(out->ids[out->n], window, (size_t)fill * sizeof *window);
            out->len[out->n++] = fill;
        } else if (fill > 0) {
            out->skipped++;
        }
        fill = 0;
    }
done:
    free(sep);
    free(window);
    if (st) ap_samples_free(out);
    return st;
}
