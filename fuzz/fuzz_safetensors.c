/* fuzz_safetensors.c - libFuzzer target for the strict safetensors reader
 * (adapters from the internet arrive in this format).  Whatever the reader
 * accepts must be fully usable: every tensor readable as floats where its
 * dtype allows, every metadata pair readable, sizes consistent. */
#include "nomoat.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    uint8_t *buf = malloc(size ? size : 1);
    if (!buf) return 0;
    memcpy(buf, data, size);
    nm_st *s;
    nm_err err;
    if (nm_st_open_buffer(buf, size, "fuzz.safetensors", &s, &err) == NM_OK) {
        for (int64_t i = 0; i < nm_st_n_meta(s); i++) {
            const char *k, *v;
            nm_st_meta_at(s, i, &k, &v);
            if (!k || !v || nm_st_meta(s, k) == NULL) abort();
        }
        for (int64_t i = 0; i < nm_st_n_tensors(s); i++) {
            const nm_st_tensor *t = nm_st_tensor_at(s, i);
            if (nm_st_find(s, t->name) != t) abort();
            uint64_t n = 1;
            for (uint32_t d = 0; d < t->n_dims; d++) n *= (uint64_t)t->shape[d];
            size_t es = nm_st_dtype_size(t->dtype);
            if (es && n * es != t->nbytes) abort(); /* the reader promised shape x dtype = bytes */
            if (n > (1u << 20)) continue;
            float *f = malloc((size_t)n * sizeof(float) + 1);
            if (f) nm_st_read_f32(s, t, f, &err);
            free(f);
        }
        nm_st_free(s);
    }
    free(buf);
    return 0;
}
