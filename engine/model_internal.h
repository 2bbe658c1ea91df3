/* model_internal.h — shared by the loaders inside engine/; not public. */
#ifndef AP_MODEL_INTERNAL_H
#define AP_MODEL_INTERNAL_H

#include "engine.h"

/* Checks a config's sizes are positive, consistent and not absurd. */
ap_status ap_config_validate(const ap_config *c, const char *what, ap_error *err);

/* Allocates model->storage for model->config and points model->w into it. */
ap_status ap_model_alloc(ap_model *model, ap_error *err);

/* One named parameter tensor: where it goes and its expected shape. The
 * Hugging Face name is without the "transformer." prefix. */
typedef struct {
    char name[64];
    float *dst;
    int ndim;
    int64_t shape[2];
} ap_tensor_slot;

/* Fills slots for every tensor of the model (4 + 12 * n_layer + 2). Returns
 * how many. `slots` must hold ap_model_slot_count(c). */
int ap_model_slot_count(const ap_config *c);
int ap_model_slots(ap_model *model, ap_tensor_slot *slots);

ap_status ap_model_load_hf(const char *path, ap_model *model, ap_error *err);
ap_status ap_model_load_llmc(const char *path, ap_model *model, ap_error *err);
ap_status ap_model_load_random(const char *spec, ap_model *model, ap_error *err);

/* IEEE half and bfloat16 to float. */
float ap_half_to_float(uint16_t h);
float ap_bf16_to_float(uint16_t b);

/* Parses a file holding one JSON object (cJSON *, declared void * here to keep
 * cJSON out of this header); AP_ERR_INPUT "path: not a JSON object<what>". */
ap_status ap_read_json_object(const char *path, const char *what, void **root, ap_error *err);

/* Reads a whole file (NUL-terminated, *n excludes the NUL). */
ap_status ap_read_file(const char *path, char **data, size_t *n, ap_error *err);

#endif
