/* merge.c - folding adapter stacks: into one adapter (exact concatenation
 * or a truncated SVD of each module's sum) and into a model's weights.
 *
 * A module's stack sums to  dW = sum_i s_i B_i A_i = sum_j b_j a_j^T  over
 * the rank-one terms j of every adapter (b_j a column of s_i B_i, a_j a row
 * of A_i).  Concatenating the terms is exact.  For a lower rank k:
 *   B = Q_B R_B and A^T = Q_A R_A (QR, Gram-Schmidt twice, in double),
 *   dW = Q_B (R_B R_A^T) Q_A^T, and the R x R core is decomposed by
 *   one-sided Jacobi, M = U S V^T, so dW = (Q_B U) S (Q_A V)^T is an SVD of
 *   dW and keeping the k largest singular values is the best rank-k
 *   approximation (Eckart-Young); the relative error is
 *   sqrt(sum of the dropped s^2 / sum of all s^2). */
#include "base/base.h"
#include "model/lora.h"
#include "tensor/types.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static const char *const GGUF_MOD[NM_PROJ_COUNT] = {"attn_q",   "attn_k", "attn_v",  "attn_output",
                                                     "ffn_gate", "ffn_up", "ffn_down"};

static const char *name_of(const nm_lora *l) { return l->path ? l->path : "adapter"; }

/* The adapters' modules agree in shape and row order. */
static nm_status check_items(const nm_lora_entry *items, size_t n, int64_t *n_layer, nm_err *err) {
    if (n == 0 || !items) return nm_err_set(err, NM_ERR_ARG, "no adapter to merge");
    *n_layer = 0;
    for (size_t i = 0; i < n; i++) {
        const nm_lora *l = items[i].lora;
        if (!l) return nm_err_set(err, NM_ERR_ARG, "adapter %zu is NULL", i);
        if (!isfinite(items[i].scale)) return nm_err_set(err, NM_ERR_ARG, "%s: the scale is not finite", name_of(l));
        if (l->n_layer > *n_layer) *n_layer = l->n_layer;
        if (l->model != items[0].lora->model)
            return nm_err_set(err, NM_ERR_ARG, "%s and %s are bound to different models", name_of(items[0].lora),
                              name_of(l));
        if (l->qk_hf != items[0].lora->qk_hf)
            return nm_err_set(err, NM_ERR_ARG,
                              "%s and %s keep their q/k rows in different orders: give the base model (-m) so both "
                              "can be put in GGUF order",
                              name_of(items[0].lora), name_of(l));
    }
    for (size_t i = 0; i < n; i++)
        for (size_t k = 0; k < i; k++) {
            const nm_lora *a = items[i].lora, *b = items[k].lora;
            for (int64_t ly = 0; ly < a->n_layer && ly < b->n_layer; ly++)
                for (int p = 0; p < NM_PROJ_COUNT; p++) {
                    const nm_lora_mod *ma = nm_lora_mod_at(a, ly, (nm_proj)p), *mb = nm_lora_mod_at(b, ly, (nm_proj)p);
                    if (ma->r && mb->r && (ma->in != mb->in || ma->out != mb->out))
                        return nm_err_set(err, NM_ERR_ARG,
                                          "%s and %s disagree on the shape of layer %lld %s (%lldx%lld vs %lldx%lld)",
                                          name_of(b), name_of(a), (long long)ly, GGUF_MOD[p], (long long)mb->out,
                                          (long long)mb->in, (long long)ma->out, (long long)ma->in);
                }
        }
    return NM_OK;
}

/* ---- small dense linear algebra in double ---- */

/* Gram-Schmidt on the R rows of X (each n long), twice for orthogonality
 * to working precision: X = R^T Q, i.e. row j of X = sum_{i<=j} R[i][j] q_i.
 * Q overwrites X; a row that is (numerically) dependent on the previous ones
 * becomes zero with R[j][j] = 0, which keeps the identity exact. */
static void qr_rows(double *X, int64_t R, int64_t n, double *Rm) {
    memset(Rm, 0, (size_t)(R * R) * sizeof *Rm);
    for (int64_t j = 0; j < R; j++) {
        double *x = X + j * n;
        double norm0 = 0;
        for (int64_t t = 0; t < n; t++) norm0 += x[t] * x[t];
        norm0 = sqrt(norm0);
        for (int pass = 0; pass < 2; pass++)
            for (int64_t i = 0; i < j; i++) {
                const double *q = X + i * n;
                double d = 0;
                for (int64_t t = 0; t < n; t++) d += q[t] * x[t];
                for (int64_t t = 0; t < n; t++) x[t] -= d * q[t];
                Rm[i * R + j] += d;
            }
        double norm = 0;
        for (int64_t t = 0; t < n; t++) norm += x[t] * x[t];
        norm = sqrt(norm);
        if (norm <= 1e-13 * norm0 || norm == 0) {
            memset(x, 0, (size_t)n * sizeof *x);
            continue;
        }
        for (int64_t t = 0; t < n; t++) x[t] /= norm;
        Rm[j * R + j] = norm;
    }
}

/* One-sided Jacobi SVD of the R x R matrix whose COLUMNS are C[j][0..R):
 * on return C[j] = s_j u_j, V[j] (columns of V) so that M V = U S, with the
 * columns sorted by decreasing s; s[j] = ||C[j]||. */
static void jacobi_svd(double *C, double *V, double *s, int64_t R) {
    memset(V, 0, (size_t)(R * R) * sizeof *V);
    for (int64_t j = 0; j < R; j++) V[j * R + j] = 1;
    for (int sweep = 0; sweep < 80; sweep++) {
        double off = 0;
        for (int64_t p = 0; p < R; p++)
            for (int64_t q = p + 1; q < R; q++) {
                double *cp = C + p * R, *cq = C + q * R;
                double a = 0, b = 0, g = 0;
                for (int64_t t = 0; t < R; t++) {
                    a += cp[t] * cp[t];
                    b += cq[t] * cq[t];
                    g += cp[t] * cq[t];
                }
                if (g == 0 || fabs(g) <= 1e-15 * sqrt(a * b)) continue;
                off = fmax(off, fabs(g) / sqrt(a * b));
                double zeta = (b - a) / (2 * g);
                double tt = (zeta >= 0 ? 1.0 : -1.0) / (fabs(zeta) + sqrt(1 + zeta * zeta));
                double c = 1 / sqrt(1 + tt * tt), sn = c * tt;
                for (int64_t t = 0; t < R; t++) {
                    double x = cp[t], y = cq[t];
                    cp[t] = c * x - sn * y;
                    cq[t] = sn * x + c * y;
                }
                double *vp = V + p * R, *vq = V + q * R;
                for (int64_t t = 0; t < R; t++) {
                    double x = vp[t], y = vq[t];
                    vp[t] = c * x - sn * y;
                    vq[t] = sn * x + c * y;
                }
            }
        if (off <= 1e-15) break;
    }
    for (int64_t j = 0; j < R; j++) {
        double n2 = 0;
        for (int64_t t = 0; t < R; t++) n2 += C[j * R + t] * C[j * R + t];
        s[j] = sqrt(n2);
    }
    /* selection sort of columns by s (R is small) */
    for (int64_t j = 0; j < R; j++) {
        int64_t best = j;
        for (int64_t k = j + 1; k < R; k++)
            if (s[k] > s[best]) best = k;
        if (best == j) continue;
        double ts = s[j];
        s[j] = s[best];
        s[best] = ts;
        for (int64_t t = 0; t < R; t++) {
            double x = C[j * R + t];
            C[j * R + t] = C[best * R + t];
            C[best * R + t] = x;
            x = V[j * R + t];
            V[j * R + t] = V[best * R + t];
            V[best * R + t] = x;
        }
    }
}

/* ---- merging adapters ---- */

/* The stack's rank-one terms of module (ly, p): rows of A (a_j) and the
 * matching rows of Bt scaled by their adapter's scale (b_j), in stack
 * order, as doubles.  Returns R. */
static int64_t gather(const nm_lora_entry *items, size_t n, int64_t ly, nm_proj p, double *A, double *Bt) {
    int64_t R = 0;
    for (size_t i = 0; i < n; i++) {
        const nm_lora *l = items[i].lora;
        if (ly >= l->n_layer) continue;
        const nm_lora_mod *m = nm_lora_mod_at(l, ly, p);
        if (!m->r) continue;
        const double s = (double)m->scale * (double)items[i].scale;
        for (int64_t j = 0; j < m->r; j++, R++) {
            if (A)
                for (int64_t t = 0; t < m->in; t++) A[R * m->in + t] = m->A[j * m->in + t];
            if (Bt)
                for (int64_t t = 0; t < m->out; t++) Bt[R * m->out + t] = s * m->Bt[j * m->out + t];
        }
    }
    return R;
}

nm_status nm_lora_merge(const nm_lora_entry *items, size_t n, int32_t rank, nm_lora **out, double *rel_err,
                        nm_err *err) {
    *out = NULL;
    if (rel_err) *rel_err = 0;
    if (rank < 0 || rank > 65536) return nm_err_set(err, NM_ERR_ARG, "merge rank %d is out of range", rank);
    int64_t n_layer;
    nm_status st = check_items(items, n, &n_layer, err);
    if (st) return st;
    const nm_lora *first = items[0].lora;
    nm_lora *l = nm_lora_create(n_layer);
    if (!l) return nm_err_set(err, NM_ERR_NOMEM, "out of memory");
    /* shapes: the sum of the ranks (exact) or min(rank, that sum) */
    int64_t r_max = 0, work_in = 0, work_out = 0, work_r = 0;
    for (int64_t ly = 0; ly < n_layer && !st; ly++)
        for (int p = 0; p < NM_PROJ_COUNT && !st; p++) {
            int64_t R = 0, in = 0, outd = 0;
            for (size_t i = 0; i < n; i++) {
                const nm_lora *a = items[i].lora;
                if (ly >= a->n_layer) continue;
                const nm_lora_mod *m = nm_lora_mod_at(a, ly, (nm_proj)p);
                R += m->r;
                if (m->r) in = m->in, outd = m->out;
            }
            if (!R) continue;
            int64_t r = rank > 0 && rank < R ? rank : R;
            st = nm_lora_shape(l, ly, (nm_proj)p, r, in, outd, err);
            if (r > r_max) r_max = r;
            if (R > work_r) work_r = R;
            if (in > work_in) work_in = in;
            if (outd > work_out) work_out = outd;
        }
    /* alpha = the largest rank: scale 1 where a module has that rank; the
     * others divide B by their scale (alpha / r) */
    l->alpha = (float)r_max;
    l->rslora = false;
    if (!st) st = nm_lora_alloc(l, err);
    double *A = NULL, *Bt = NULL, *RA = NULL, *RB = NULL, *M = NULL, *V = NULL, *s = NULL;
    if (!st) {
        A = nm_calloc((size_t)(work_r * work_in), sizeof *A);
        Bt = nm_calloc((size_t)(work_r * work_out), sizeof *Bt);
        RA = nm_calloc((size_t)(work_r * work_r), sizeof *RA);
        RB = nm_calloc((size_t)(work_r * work_r), sizeof *RB);
        M = nm_calloc((size_t)(work_r * work_r), sizeof *M);
        V = nm_calloc((size_t)(work_r * work_r), sizeof *V);
        s = nm_calloc((size_t)work_r, sizeof *s);
        if (!A || !Bt || !RA || !RB || !M || !V || !s) st = nm_err_set(err, NM_ERR_NOMEM, "out of memory for the merge");
    }
    double tail = 0, total = 0;
    for (int64_t ly = 0; ly < n_layer && !st; ly++)
        for (int p = 0; p < NM_PROJ_COUNT; p++) {
            nm_lora_mod *dst = nm_lora_mod_at(l, ly, (nm_proj)p);
            if (!dst->r) continue;
            const int64_t in = dst->in, od = dst->out, k = dst->r;
            const double inv = 1.0 / (double)dst->scale;
            if (rank == 0) {
                /* exact: the terms in stack order, in float; the scale goes
                 * into B (exactly when it is a power of two) */
                int64_t R = 0;
                for (size_t i = 0; i < n; i++) {
                    const nm_lora *a = items[i].lora;
                    if (ly >= a->n_layer) continue;
                    const nm_lora_mod *m = nm_lora_mod_at(a, ly, (nm_proj)p);
                    if (!m->r) continue;
                    const float sc = m->scale * items[i].scale;
                    memcpy(dst->A + R * in, m->A, (size_t)(m->r * in) * sizeof(float));
                    for (int64_t t = 0; t < m->r * od; t++) dst->Bt[R * od + t] = (float)((double)(sc * m->Bt[t]) * inv);
                    R += m->r;
                }
                continue;
            }
            const int64_t R = gather(items, n, ly, (nm_proj)p, A, Bt);
            qr_rows(Bt, R, od, RB); /* Bt rows are the columns b_j of B */
            qr_rows(A, R, in, RA);
            /* core M = R_B R_A^T; column l of M is M[.][l] */
            for (int64_t c = 0; c < R; c++)
                for (int64_t r = 0; r < R; r++) {
                    double d = 0;
                    for (int64_t j = 0; j < R; j++) d += RB[r * R + j] * RA[c * R + j];
                    M[c * R + r] = d;
                }
            jacobi_svd(M, V, s, R);
            for (int64_t j = 0; j < R; j++) {
                total += s[j] * s[j];
                if (j >= k) tail += s[j] * s[j];
            }
            for (int64_t t = 0; t < k; t++) {
                const double sq = sqrt(s[t]);
                const double *u = M + t * R, *v = V + t * R; /* u = s_t * (unit left vector) */
                float *arow = dst->A + t * in, *brow = dst->Bt + t * od;
                for (int64_t x = 0; x < od; x++) {
                    double d = 0;
                    for (int64_t i = 0; i < R; i++) d += Bt[i * od + x] * u[i];
                    brow[x] = (float)(s[t] > 0 ? d / sq * inv : 0.0);
                }
                for (int64_t x = 0; x < in; x++) {
                    double d = 0;
                    for (int64_t i = 0; i < R; i++) d += A[i * in + x] * v[i];
                    arow[x] = (float)(d * sq);
                }
            }
        }
    free(A);
    free(Bt);
    free(RA);
    free(RB);
    free(M);
    free(V);
    free(s);
    if (!st) {
        if (rel_err) *rel_err = total > 0 ? sqrt(tail / total) : 0.0;
        l->model = first->model;
        l->qk_hf = first->qk_hf;
        l->head_dim = first->head_dim;
        l->permute_qk = first->permute_qk;
        memcpy(l->arch, first->arch, sizeof l->arch);
        l->has_base_fp = first->has_base_fp;
        memcpy(l->base_fp, first->base_fp, sizeof l->base_fp);
        st = nm_lora_set_strings(l, NULL, first->base_name, first->base_sig, err);
        if (!st && first->n_under) {
            l->under = nm_calloc(first->n_under, sizeof *l->under);
            if (!l->under)
                st = nm_err_set(err, NM_ERR_NOMEM, "out of memory");
            else {
                memcpy(l->under, first->under, first->n_under * sizeof *l->under);
                l->n_under = first->n_under;
            }
        }
    }
    if (st) {
        nm_lora_free(l);
        return st;
    }
    l->format = first->format;
    nm_lora_finish(l);
    *out = l;
    return NM_OK;
}

/* ---- merging into a model ---- */

/* llama.cpp's general.file_type for a whole-model type (as convert.c). */
static int ftype_for(nm_type t) {
    switch (t) {
    case NM_TYPE_F32: return 0;
    case NM_TYPE_F16: return 1;
    case NM_TYPE_Q4_0: return 2;
    case NM_TYPE_Q4_1: return 3;
    case NM_TYPE_Q8_0: return 7;
    case NM_TYPE_Q5_0: return 8;
    case NM_TYPE_Q5_1: return 9;
    case NM_TYPE_Q6_K: return 18;
    case NM_TYPE_BF16: return 32;
    default: return -1;
    }
}

static bool is_weight_matrix(const nm_gguf_tensor *t) {
    size_t n = strlen(t->name);
    return t->n_dims == 2 && n > 7 && strcmp(t->name + n - 7, ".weight") == 0;
}

/* "blk.N.<proj>.weight" -> layer and projection. */
static bool proj_of(const char *name, int64_t *layer, nm_proj *p) {
    if (strncmp(name, "blk.", 4) != 0) return false;
    char *end;
    long long v = strtoll(name + 4, &end, 10);
    if (end == name + 4 || *end != '.' || v < 0) return false;
    for (int k = 0; k < NM_PROJ_COUNT; k++) {
        size_t n = strlen(GGUF_MOD[k]);
        if (strncmp(end + 1, GGUF_MOD[k], n) == 0 && strcmp(end + 1 + n, ".weight") == 0) {
            *layer = v;
            *p = (nm_proj)k;
            return true;
        }
    }
    return false;
}

typedef struct merge_job {
    const nm_gguf *g;
    const nm_lora_entry *items;
    size_t n;
    nm_type *out_type;   /* per tensor of g */
    bool *adapted;       /* per tensor of g */
} merge_job;

/* Tensor `index` of the output: g's tensor with the stack added (in double,
 * rounded once) and encoded in its output type, row by row. */
static nm_status merge_fill(void *user, size_t index, void *buf, uint64_t nbytes, nm_err *err) {
    merge_job *j = user;
    const nm_gguf_tensor *t = nm_gguf_tensor_at(j->g, (int64_t)index);
    const int64_t cols = t->ne[0], rows = t->ne[1] * t->ne[2] * t->ne[3];
    const nm_type ot = j->out_type[index];
    const size_t in_rb = nm_type_row_bytes((nm_type)t->type, cols), out_rb = nm_type_row_bytes(ot, cols);
    if ((uint64_t)rows * out_rb != nbytes) return nm_err_set(err, NM_ERR_INTERNAL, "merge: size of %s", t->name);
    int64_t layer = 0;
    nm_proj p = NM_PROJ_Q;
    if (j->adapted[index]) proj_of(t->name, &layer, &p);
    float *row = nm_calloc((size_t)cols, sizeof *row);
    double *acc = nm_calloc((size_t)cols, sizeof *acc);
    nm_status st = NM_OK;
    if (!row || !acc) {
        st = nm_err_set(err, NM_ERR_NOMEM, "out of memory merging %s", t->name);
        goto done;
    }
    for (int64_t r = 0; r < rows; r++) {
        nm_dequantize((nm_type)t->type, (const uint8_t *)t->data + (size_t)r * in_rb, row, cols, NULL);
        if (j->adapted[index]) {
            /* row r of W + sum_i s_i B_i A_i: coefficients s_i B_i[r][.] on
             * the rows of A_i */
            for (int64_t c = 0; c < cols; c++) acc[c] = row[c];
            for (size_t i = 0; i < j->n; i++) {
                const nm_lora *l = j->items[i].lora;
                if (layer >= l->n_layer) continue;
                const nm_lora_mod *m = nm_lora_mod_at(l, layer, p);
                const double s = (double)m->scale * (double)j->items[i].scale;
                for (int64_t q = 0; q < m->r; q++) {
                    const double b = s * (double)m->Bt[q * m->out + r];
                    const float *a = m->A + q * m->in;
                    for (int64_t c = 0; c < cols; c++) acc[c] += b * (double)a[c];
                }
            }
            for (int64_t c = 0; c < cols; c++) row[c] = (float)acc[c];
        }
        nm_quantize(ot, row, (uint8_t *)buf + (size_t)r * out_rb, cols, NULL);
    }
done:
    free(row);
    free(acc);
    return st;
}

static void basename_of(const char *path, char *out, size_t cap) {
    const char *b = path ? strrchr(path, '/') : NULL;
    const char *s = path ? (b && b[1] ? b + 1 : path) : "adapter";
    snprintf(out, cap, "%s", s);
}

nm_status nm_model_merge_loras(const nm_model *m, const nm_lora_entry *items, size_t n, int type,
                               const char *out_path, const nm_log *log, nm_err *err) {
    int64_t n_layer;
    nm_status st = check_items(items, n, &n_layer, err);
    if (st) return st;
    for (size_t i = 0; i < n; i++)
        if (items[i].lora->model != m)
            return nm_err_set(err, NM_ERR_ARG, "%s was not loaded for this model", name_of(items[i].lora));
    if (type >= 0 && !nm_type_can_quantize((nm_type)type))
        return nm_err_set(err, NM_ERR_UNSUPPORTED, "writing weights as %s is not supported",
                          nm_type_name((uint32_t)type) ? nm_type_name((uint32_t)type) : "(unknown type)");
    /* A model that packed its weights for its kernels (nm_model_base_ids)
     * no longer holds them as stored: they are read from its file again,
     * which must still be the one loaded. */
    const nm_gguf *g = m->gguf;
    nm_gguf *again = NULL;
    const nm_base_ids *ids = nm_model_base_ids(m);
    if (ids) {
        if ((st = nm_gguf_open(nm_gguf_path(m->gguf), &again, err))) return st;
        char fp[NM_FP_HEX];
        nm_base_fingerprint(again, fp);
        if (strcmp(fp, ids->fp) != 0) {
            nm_gguf_free(again);
            return nm_err_set(err, NM_ERR_IO, "%s changed on disk since the model was loaded: load it again to merge",
                              nm_gguf_path(m->gguf));
        }
        g = again;
    }
    const int64_t nt = nm_gguf_n_tensors(g);
    merge_job job = {g, items, n, nm_calloc((size_t)nt + 1, sizeof(nm_type)), nm_calloc((size_t)nt + 1, sizeof(bool))};
    nm_gguf_writer *w = nm_gguf_writer_new(nm_gguf_version(g));
    nm_lora_prov *prov = NULL;
    size_t n_prov = 0;
    if (!job.out_type || !job.adapted || !w) {
        st = nm_err_set(err, NM_ERR_NOMEM, "out of memory");
        goto done;
    }
    for (int64_t i = 0; i < nm_gguf_n_kv(g) && !st; i++)
        if (nm_gguf_writer_copy_kv(w, g, i)) st = nm_err_set(err, NM_ERR_NOMEM, "out of memory");
    if (st) goto done;
    /* provenance: the original base, and every adapter folded in so far */
    char base_fp[NM_FP_HEX];
    nm_str mb;
    if (nm_gguf_get_str(g, NM_KEY_MERGE_BASE, &mb, NULL) == NM_OK && mb.len == 16) {
        memcpy(base_fp, mb.ptr, 16);
        base_fp[16] = 0;
        nm_lora_merged_list(g, &prov, &n_prov);
    } else {
        nm_base_fingerprint(g, base_fp);
    }
    nm_lora_prov *all = realloc(prov, (n_prov + n) * sizeof *all);
    if (!all) {
        st = nm_err_set(err, NM_ERR_NOMEM, "out of memory");
        goto done;
    }
    prov = all;
    for (size_t i = 0; i < n; i++) {
        nm_lora_prov *e = &prov[n_prov++];
        memset(e, 0, sizeof *e);
        memcpy(e->fp, items[i].lora->fp, NM_FP_HEX);
        e->scale = items[i].scale;
        basename_of(items[i].lora->path, e->name, sizeof e->name);
    }
    char *list = nm_lora_under_json(prov, n_prov);
    bool ok = list && !nm_gguf_writer_set_str(w, NM_KEY_MERGE_BASE, base_fp) &&
              !nm_gguf_writer_set_str(w, NM_KEY_MERGE_ADAPTERS, list);
    free(list);
    if (ok && type >= 0) {
        if (nm_type_traits_get((uint32_t)type)->is_quantized) ok = !nm_gguf_writer_set_u32(w, "general.quantization_version", 2);
        if (ok && ftype_for((nm_type)type) >= 0)
            ok = !nm_gguf_writer_set_u32(w, "general.file_type", (uint32_t)ftype_for((nm_type)type));
    }
    if (!ok) {
        st = nm_err_set(err, NM_ERR_NOMEM, "out of memory");
        goto done;
    }
    int64_t n_merged = 0;
    for (int64_t i = 0; i < nt && !st; i++) {
        const nm_gguf_tensor *t = nm_gguf_tensor_at(g, i);
        int64_t layer;
        nm_proj p;
        bool adapted = false;
        if (proj_of(t->name, &layer, &p))
            for (size_t k = 0; k < n; k++)
                adapted |= layer < items[k].lora->n_layer && nm_lora_mod_at(items[k].lora, layer, p)->r > 0;
        nm_type ot = (nm_type)t->type;
        if (type >= 0 && is_weight_matrix(t)) {
            if (nm_type_row_bytes((nm_type)type, t->ne[0]))
                ot = (nm_type)type;
            else
                nm_logf(log, NM_LOG_WARN, "%s: row length %lld does not fit %s blocks; kept as %s", t->name,
                        (long long)t->ne[0], nm_type_name((uint32_t)type), nm_type_name(t->type));
        }
        if (adapted && !nm_type_can_quantize(ot)) {
            nm_logf(log, NM_LOG_WARN, "%s: nomoat cannot encode %s; the merged tensor is stored as F32 (--type chooses)",
                    t->name, nm_type_name(ot));
            ot = NM_TYPE_F32;
        }
        job.out_type[i] = ot;
        job.adapted[i] = adapted;
        n_merged += adapted;
        if (!adapted && ot == (nm_type)t->type) {
            st = nm_gguf_writer_add_tensor(w, t->name, ot, t->n_dims, t->ne, t->data, t->nbytes, err);
            continue;
        }
        if (!nm_type_can_dequantize((nm_type)t->type)) {
            st = nm_err_set(err, NM_ERR_UNSUPPORTED, "%s: tensor '%s' of type %s cannot be read", nm_gguf_path(g),
                            t->name, nm_type_name(t->type));
            break;
        }
        uint64_t nbytes = (uint64_t)nm_type_row_bytes(ot, t->ne[0]) * (uint64_t)(t->ne[1] * t->ne[2] * t->ne[3]);
        st = nm_gguf_writer_add_tensor_fn(w, t->name, ot, t->n_dims, t->ne, nbytes, merge_fill, &job, err);
    }
    if (!st) st = nm_gguf_writer_write(w, out_path, err);
    if (!st)
        nm_logf(log, NM_LOG_INFO, "%s: %zu adapter%s folded into %lld weight matrices", out_path, n, n == 1 ? "" : "s",
                (long long)n_merged);
done:
    free(prov);
    free(job.out_type);
    free(job.adapted);
    nm_gguf_writer_free(w);
    nm_gguf_free(again);
    return st;
}
