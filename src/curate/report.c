/* report.c - what cleaning removed and why (text or JSON), and writing the
 * kept documents back. */
#include "curate/curate.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define EXCERPT 160

static void rule_text(const nm_clean_params *p, const nm_clean_result *r, nm_clean_step s, nm_buf *b) {
    switch (s) {
    case NM_CLEAN_LENGTH: {
        if (!(p->min_chars > 0 || p->max_chars > 0 || p->min_words > 0 || p->max_words > 0)) {
            nm_buf_printf(b, "off");
            break;
        }
        char mc[32] = "no limit", mw[32] = "no limit";
        if (p->max_chars > 0) snprintf(mc, sizeof mc, "%lld", (long long)p->max_chars);
        if (p->max_words > 0) snprintf(mw, sizeof mw, "%lld", (long long)p->max_words);
        nm_buf_printf(b, "characters in [%lld, %s], words in [%lld, %s]", (long long)p->min_chars, mc,
                      (long long)p->min_words, mw);
        break;
    }
    case NM_CLEAN_CHARS:
        if (p->max_nonletter >= 1 && p->max_digit >= 1)
            nm_buf_printf(b, "off");
        else
            nm_buf_printf(b, "non-letters <= %g%%, digits <= %g%% of non-space characters", p->max_nonletter * 100,
                          p->max_digit * 100);
        break;
    case NM_CLEAN_LANG:
        if (!p->lang)
            nm_buf_printf(b, "off");
        else
            nm_buf_printf(b, "English: ASCII letters >= %g%% of letters; stop words >= %g%% of words (texts of %lld+ words)",
                          p->en_min_ascii * 100, p->en_min_stopwords * 100, (long long)p->en_min_words);
        break;
    case NM_CLEAN_FORBID:
        if (!p->n_forbid)
            nm_buf_printf(b, "off");
        else
            nm_buf_printf(b, "%zu forbidden string%s (ASCII case-insensitive)", p->n_forbid, p->n_forbid == 1 ? "" : "s");
        break;
    case NM_CLEAN_DECONTAM:
        if (!p->eval)
            nm_buf_printf(b, "off");
        else
            nm_buf_printf(b, "%d-word sequences of %zu evaluation documents (%zu n-grams; %zu shorter than %d words ignored)",
                          p->ngram, nm_docset_size(p->eval), r->eval_ngrams, r->eval_short_skipped, p->ngram_min);
        break;
    case NM_CLEAN_EXACT:
        nm_buf_printf(b, p->exact ? "equal normalised text (64-bit hash)" : "off");
        break;
    case NM_CLEAN_NEAR:
        if (!p->near)
            nm_buf_printf(b, "off");
        else
            nm_buf_printf(b, "MinHash %d permutations, %d-%s shingles, Jaccard >= %.2f, LSH %d bands x %d rows",
                          p->num_perm, p->shingle, p->char_shingles ? "character" : "word", p->threshold, r->bands,
                          r->rows);
        break;
    default:
        break;
    }
}

static void where(const nm_docset *ds, const nm_doc *d, nm_buf *b) {
    if (d->line > 0)
        nm_buf_printf(b, "%s:%lld", nm_docset_file(ds, d->file), (long long)d->line);
    else
        nm_buf_printf(b, "%s record %lld", nm_docset_file(ds, d->file), (long long)d->record);
}

/* The evaluation words a decontaminated document shares (from its
 * normalised form). */
static void shared_words(const nm_doc *d, const nm_clean_result *r, size_t i, nm_buf *out) {
    nm_buf norm;
    nm_buf_init(&norm);
    nm_cu_normalize(d->text, d->len, &norm);
    int64_t at = (int64_t)r->value[i], len = r->detail[i], w = 0;
    size_t a = 0, start = norm.len, end = norm.len;
    while (a <= norm.len) {
        if (w == at) start = a;
        const char *sp = a < norm.len ? memchr(norm.data + a, ' ', norm.len - a) : NULL;
        size_t e = sp ? (size_t)(sp - (const char *)norm.data) : norm.len;
        w++;
        if (w == at + len) {
            end = e;
            break;
        }
        a = e + 1;
    }
    if (!norm.oom && start < end) nm_buf_push(out, norm.data + start, end - start);
    nm_buf_deinit(&norm);
}

static const double CURVE_S[] = {0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0};
#define N_CURVE (sizeof CURVE_S / sizeof CURVE_S[0])

nm_status nm_clean_report(const nm_docset *docs, const nm_clean_params *p, const nm_clean_result *r, bool json,
                          int32_t n_examples, char **out, nm_err *err) {
    nm_buf b, t;
    nm_buf_init(&b);
    nm_buf_init(&t);
    const size_t n = r->n_docs;
    char reason[600];
    if (json) {
        nm_buf_printf(&b, "{\"documents\": %zu, \"kept\": %zu, \"files\": [", n, r->count[NM_CLEAN_KEPT]);
        for (int32_t f = 0; f < nm_docset_n_files(docs); f++) {
            const char *path = nm_docset_file(docs, f);
            if (f) nm_buf_push(&b, ", ", 2);
            nm_cu_json_str(&b, path, strlen(path));
        }
        nm_buf_printf(&b, "], \"steps\": [");
    } else {
        nm_buf_printf(&b, "cleaning: %zu documents", n);
        if (nm_docset_n_files(docs) > 0) nm_buf_printf(&b, " from %d file%s", nm_docset_n_files(docs),
                                                       nm_docset_n_files(docs) == 1 ? "" : "s");
        nm_buf_printf(&b, " -> %zu kept (%.1f%%)\n\n", r->count[NM_CLEAN_KEPT],
                      n ? 100.0 * (double)r->count[NM_CLEAN_KEPT] / (double)n : 0.0);
        nm_buf_printf(&b, "  %-9s %9s %8s  %s\n", "step", "removed", "seconds", "rule");
    }
    for (int s = 1; s < NM_CLEAN_N_STEPS; s++) {
        t.len = 0;
        rule_text(p, r, (nm_clean_step)s, &t);
        nm_buf_push(&t, "", 1);
        if (json) {
            nm_buf_printf(&b, "%s{\"step\": \"%s\", \"removed\": %zu, \"seconds\": %.3f, \"rule\": ", s > 1 ? ", " : "",
                          nm_clean_step_name((nm_clean_step)s), r->count[s], r->seconds[s]);
            nm_cu_json_str(&b, (const char *)t.data, t.len - 1);
            nm_buf_printf(&b, ", \"examples\": [");
        } else {
            nm_buf_printf(&b, "  %-9s %9zu %8.2f  %s\n", nm_clean_step_name((nm_clean_step)s), r->count[s],
                          r->seconds[s], (const char *)t.data);
        }
        if (json) {
            int32_t shown = 0;
            for (size_t i = 0; i < n && shown < n_examples; i++) {
                if (r->step[i] != s) continue;
                const nm_doc *d = nm_docset_doc(docs, i);
                nm_clean_reason(docs, p, r, i, reason, sizeof reason);
                const char *file = nm_docset_file(docs, d->file);
                nm_buf_printf(&b, "%s{\"file\": ", shown ? ", " : "");
                nm_cu_json_str(&b, file, strlen(file));
                nm_buf_printf(&b, ", \"line\": %lld, \"record\": %lld, \"text\": ", (long long)d->line,
                              (long long)d->record);
                nm_cu_json_excerpt(&b, d->text, d->len, EXCERPT);
                nm_buf_printf(&b, ", \"reason\": ");
                nm_cu_json_str(&b, reason, strlen(reason));
                if (s == NM_CLEAN_DECONTAM) {
                    t.len = 0;
                    shared_words(d, r, i, &t);
                    nm_buf_printf(&b, ", \"shared\": ");
                    nm_cu_json_str(&b, t.len ? (const char *)t.data : "", t.len);
                }
                const nm_doc *o = NULL;
                if ((s == NM_CLEAN_EXACT || s == NM_CLEAN_NEAR) && r->ref[i] >= 0)
                    o = nm_docset_doc(docs, (size_t)r->ref[i]);
                else if (s == NM_CLEAN_DECONTAM && p->eval && r->ref[i] >= 0)
                    o = nm_docset_doc(p->eval, (size_t)r->ref[i]);
                if (o) {
                    nm_buf_printf(&b, ", \"matched_text\": ");
                    nm_cu_json_excerpt(&b, o->text, o->len, EXCERPT);
                }
                nm_buf_printf(&b, "}");
                shown++;
            }
            nm_buf_printf(&b, "]}");
        }
    }
    if (json) {
        nm_buf_printf(&b, "]");
        if (p->near) {
            nm_buf_printf(&b,
                          ", \"lsh\": {\"num_perm\": %d, \"threshold\": %g, \"shingle\": %d, \"shingle_unit\": \"%s\", "
                          "\"bands\": %d, \"rows\": %d, \"candidate_comparisons\": %llu, \"similar_pairs\": %llu, "
                          "\"memory_bytes\": %llu, \"curve\": [",
                          p->num_perm, p->threshold, p->shingle, p->char_shingles ? "characters" : "words", r->bands,
                          r->rows, (unsigned long long)r->lsh_pairs, (unsigned long long)r->lsh_verified,
                          (unsigned long long)r->near_bytes);
            for (size_t k = 0; k < N_CURVE; k++) {
                double pr = nm_lsh_prob(CURVE_S[k], r->bands, r->rows);
                nm_buf_printf(&b, "%s{\"s\": %.2f, \"p_candidate\": %.6f, \"false_negative\": %.6f}", k ? ", " : "",
                              CURVE_S[k], pr, 1 - pr);
            }
            nm_buf_printf(&b, "]}");
        }
        nm_buf_printf(&b, "}\n");
    } else {
        if (p->near) {
            nm_buf_printf(&b,
                          "\nnear duplicates: a pair of Jaccard similarity s becomes an LSH candidate with probability\n"
                          "P(s) = 1 - (1 - s^%d)^%d; false-negative rate 1 - P(s) = (1 - s^%d)^%d:\n ",
                          r->rows, r->bands, r->rows, r->bands);
            for (size_t k = 0; k < N_CURVE; k++) nm_buf_printf(&b, " s=%.2f", CURVE_S[k]);
            nm_buf_printf(&b, "\n ");
            for (size_t k = 0; k < N_CURVE; k++)
                nm_buf_printf(&b, " FN=%.3f", 1 - nm_lsh_prob(CURVE_S[k], r->bands, r->rows));
            nm_buf_printf(&b,
                          "\n  candidates are then verified (estimated Jaccard >= %.2f, standard error about\n"
                          "  sqrt(s(1-s)/%d) = %.3f at the threshold); %llu comparisons, %llu similar pairs,\n"
                          "  %.1f MiB of signatures and band keys.\n",
                          p->threshold, p->num_perm, sqrt(p->threshold * (1 - p->threshold) / p->num_perm),
                          (unsigned long long)r->lsh_pairs, (unsigned long long)r->lsh_verified,
                          (double)r->near_bytes / 1048576.0);
        }
        bool header = false;
        for (int s = 1; s < NM_CLEAN_N_STEPS; s++) {
            int32_t shown = 0;
            for (size_t i = 0; i < n && shown < n_examples; i++) {
                if (r->step[i] != s) continue;
                if (!header) {
                    nm_buf_printf(&b, "\nexamples:\n");
                    header = true;
                }
                const nm_doc *d = nm_docset_doc(docs, i);
                nm_clean_reason(docs, p, r, i, reason, sizeof reason);
                nm_buf_printf(&b, "  [%s] ", nm_clean_step_name((nm_clean_step)s));
                where(docs, d, &b);
                nm_buf_printf(&b, ": %s\n    \"", reason);
                nm_cu_text_excerpt(&b, d->text, d->len, EXCERPT);
                nm_buf_printf(&b, "\"\n");
                if (s == NM_CLEAN_DECONTAM) {
                    t.len = 0;
                    shared_words(d, r, i, &t);
                    nm_buf_printf(&b, "    shared words: \"");
                    nm_cu_text_excerpt(&b, t.len ? (const char *)t.data : "", t.len, EXCERPT);
                    nm_buf_printf(&b, "\"\n");
                }
                shown++;
            }
        }
    }
    nm_buf_push(&b, "", 1);
    nm_buf_deinit(&t);
    if (b.oom) {
        nm_buf_deinit(&b);
        return nm_err_set(err, NM_ERR_NOMEM, "out of memory for the report");
    }
    *out = (char *)b.data;
    return NM_OK;
}

nm_status nm_clean_write(const nm_docset *docs, const nm_clean_result *r, int32_t file, const char *path,
                         nm_err *err) {
    nm_atomic_file af;
    nm_status st = nm_atomic_open(&af, path, err);
    if (st) return st;
    bool first_par = true;
    for (size_t i = 0; i < r->n_docs && !st; i++) {
        if (r->step[i] != NM_CLEAN_KEPT) continue;
        const nm_doc *d = nm_docset_doc(docs, i);
        if (file >= 0 && d->file != file) continue;
        nm_doc_split sp = nm_docset_file_split(docs, d->file);
        if (sp == NM_DOC_PARAGRAPHS) {
            if (!first_par) st = nm_atomic_write(&af, "\n", 1, err);
            first_par = false;
        }
        if (!st) st = nm_atomic_write(&af, d->raw, d->raw_len, err);
        if (!st && !(sp == NM_DOC_WHOLE)) st = nm_atomic_write(&af, "\n", 1, err);
    }
    if (st) {
        nm_atomic_abort(&af);
        return st;
    }
    return nm_atomic_commit(&af, err);
}
