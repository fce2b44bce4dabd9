/* make_st_seeds.c DIR - small valid safetensors files (F32/F16/BF16, with
 * metadata, a PEFT-style adapter layout) as the seed corpus of
 * fuzz_safetensors. */
#include "nomoat.h"

#include <stdio.h>

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: make_st_seeds DIR\n");
        return 2;
    }
    static float a[4 * 64];
    static uint16_t h[64 * 4];
    for (int i = 0; i < 256; i++) {
        a[i] = (float)(i % 17) / 17.0f - 0.5f;
        h[i] = nm_f32_to_f16(a[i]);
    }
    nm_err err;
    int rc = 0;
    const char *dtypes[3] = {"F32", "F16", "BF16"};
    for (int k = 0; k < 3; k++) {
        nm_st_writer *w = nm_st_writer_new();
        nm_st_writer_meta(w, "format", "pt", &err);
        nm_st_writer_meta(w, "nomoat.base_fingerprint", "0123456789abcdef", &err);
        int64_t sa[2] = {4, 64}, sb[2] = {64, 4};
        const void *da = k == 0 ? (const void *)a : (const void *)h;
        uint64_t nb = k == 0 ? sizeof a : sizeof h;
        nm_st_writer_add(w, "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", dtypes[k], 2, sa, da,
                         nb, &err);
        nm_st_writer_add(w, "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight", dtypes[k], 2, sb, da,
                         nb, &err);
        char path[1024];
        snprintf(path, sizeof path, "%s/seed-%s.safetensors", argv[1], dtypes[k]);
        if (nm_st_writer_write(w, path, &err) != NM_OK) {
            fprintf(stderr, "%s\n", err.msg);
            rc = 1;
        }
        nm_st_writer_free(w);
    }
    return rc;
}
