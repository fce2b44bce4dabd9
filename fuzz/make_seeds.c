/* make_seeds.c DIR - writes small valid GGUF files as a seed corpus for
 * fuzz_gguf (the shared models are larger than the fuzzer's input limit). */
#include "nomoat.h"

#include <stdio.h>

static int write_seed(const char *dir, const char *name, uint32_t version, nm_type type, int variant) {
    nm_gguf_writer *w = nm_gguf_writer_new(version);
    nm_gguf_writer_set_str(w, "general.architecture", "llama");
    nm_gguf_writer_set_u32(w, "llama.block_count", 1);
    nm_gguf_writer_set_f32(w, "llama.attention.layer_norm_rms_epsilon", 1e-5f);
    nm_gguf_writer_set_bool(w, "tokenizer.ggml.add_bos_token", true);
    const char *toks[] = {"<unk>", "<s>", "</s>", "\xe2\x96\x81the", "a"};
    nm_gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", toks, 5);
    float scores[5] = {0, 0, 0, -1, -2};
    nm_gguf_writer_set_arr(w, "tokenizer.ggml.scores", NM_GGUF_FLOAT32, scores, 5);
    if (variant) {
        nm_gguf_writer_set_u32(w, "general.alignment", 64);
        int64_t big[2] = {-1, 1LL << 40};
        nm_gguf_writer_set_arr(w, "x.i64", NM_GGUF_INT64, big, 2);
        nm_gguf_writer_set_f64(w, "x.f64", 3.5);
    }
    static float data[256 * 4];
    static unsigned char q[4096];
    for (int i = 0; i < 256 * 4; i++) data[i] = (float)((i * 37) % 101 - 50) / 50.0f;
    int64_t ne[2] = {256, 2};
    size_t nb = nm_type_row_bytes(type, 256) * 2;
    nm_err err;
    nm_quantize(type, data, q, 512, &err);
    nm_gguf_writer_add_tensor(w, "blk.0.attn_q.weight", type, 2, ne, q, nb, &err);
    int64_t ne1[1] = {8};
    nm_gguf_writer_add_tensor(w, "blk.0.attn_norm.weight", NM_TYPE_F32, 1, ne1, data, 32, &err);
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    int rc = nm_gguf_writer_write(w, path, &err) == NM_OK ? 0 : 1;
    if (rc) fprintf(stderr, "%s\n", err.msg);
    nm_gguf_writer_free(w);
    return rc;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: make_seeds DIR\n");
        return 2;
    }
    int rc = 0;
    rc |= write_seed(argv[1], "seed-f32.gguf", 3, NM_TYPE_F32, 0);
    rc |= write_seed(argv[1], "seed-f16-v2.gguf", 2, NM_TYPE_F16, 1);
    rc |= write_seed(argv[1], "seed-q8_0.gguf", 3, NM_TYPE_Q8_0, 0);
    rc |= write_seed(argv[1], "seed-q4_0.gguf", 3, NM_TYPE_Q4_0, 1);
    rc |= write_seed(argv[1], "seed-bf16.gguf", 3, NM_TYPE_BF16, 0);
    return rc;
}
