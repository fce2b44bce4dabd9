/* fuzz_gguf.c - libFuzzer target for the GGUF reader.  Any input must give
 * either a clean error or a fully usable nm_gguf: every accessor, the
 * description printer and dequantization of every tensor are exercised on
 * what the reader accepted (ASan/UBSan catch any overread). */
#include "nomoat.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    /* An exact-size copy so reads past the end are caught. */
    uint8_t *buf = malloc(size ? size : 1);
    if (!buf) return 0;
    memcpy(buf, data, size);
    nm_gguf *g;
    nm_err err;
    if (nm_gguf_open_buffer(buf, size, "fuzz.gguf", &g, &err) == NM_OK) {
        for (int64_t i = 0; i < nm_gguf_n_kv(g); i++) {
            (void)nm_gguf_key(g, i);
            uint64_t n = nm_gguf_arr_n(g, i);
            if (nm_gguf_arr_type(g, i) == NM_GGUF_STRING && n) (void)nm_gguf_arr_str(g, i, n - 1);
        }
        char *text;
        if (nm_gguf_describe(g, true, &text, &err) == NM_OK) free(text);
        if (nm_gguf_describe(g, false, &text, &err) == NM_OK) free(text);
        float row[512];
        for (int64_t i = 0; i < nm_gguf_n_tensors(g); i++) {
            const nm_gguf_tensor *t = nm_gguf_tensor_at(g, i);
            int64_t bs = nm_type_block_size((nm_type)t->type);
            size_t bb = nm_type_block_bytes((nm_type)t->type);
            /* first block of each tensor with data */
            if (bs > 0 && bs <= 512 && t->nbytes >= bb && nm_type_can_dequantize((nm_type)t->type))
                nm_dequantize((nm_type)t->type, t->data, row, bs, &err);
        }
        nm_gguf_free(g);
    }
    free(buf);
    return 0;
}
