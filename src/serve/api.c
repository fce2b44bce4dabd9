/*
 * api.c - the OpenAI request schema: strict parsing of chat and completion
 * requests into srv_request, adapter-stack resolution, and the JSON of
 * responses, stream chunks and errors.
 *
 * Strict means: a known field with the wrong JSON type, or a value out of
 * its range, is a 400 naming the field; null counts as absent (OpenAI's
 * clients send nulls for unset options); unknown fields are ignored, since
 * clients add their own.
 */
#include "serve/internal.h"

#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------ */
/* errors                                                                   */
/* ------------------------------------------------------------------------ */

void srv_error_set(srv_error *e, int http, const char *type, const char *code, const char *param,
                   const char *fmt, ...) {
    e->http = http;
    e->type = type;
    e->code = code;
    snprintf(e->param, sizeof e->param, "%s", param ? param : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof e->msg, fmt, ap);
    va_end(ap);
}

void srv_bad(srv_error *e, const char *param, const char *fmt, ...) {
    e->http = 400;
    e->type = "invalid_request_error";
    e->code = NULL;
    snprintf(e->param, sizeof e->param, "%s", param ? param : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof e->msg, fmt, ap);
    va_end(ap);
}

/* json_string() refuses invalid UTF-8; messages may quote client bytes. */
static json_t *json_text(const char *s, size_t n) {
    nm_buf b;
    nm_buf_init(&b);
    srv_utf8_sanitize(&b, s, n);
    json_t *v = b.oom ? NULL : json_stringn(b.len ? (const char *)b.data : "", b.len);
    nm_buf_deinit(&b);
    return v;
}

char *srv_error_json(const srv_error *e) {
    json_t *o = json_object();
    json_object_set_new(o, "message", json_text(e->msg, strlen(e->msg)));
    json_object_set_new(o, "type", json_string(e->type ? e->type : "server_error"));
    json_object_set_new(o, "param", e->param[0] ? json_text(e->param, strlen(e->param)) : json_null());
    json_object_set_new(o, "code", e->code ? json_string(e->code) : json_null());
    json_t *root = json_object();
    json_object_set_new(root, "error", o);
    char *s = json_dumps(root, JSON_COMPACT);
    json_decref(root);
    return s;
}

/* ------------------------------------------------------------------------ */
/* UTF-8                                                                    */
/* ------------------------------------------------------------------------ */

/* Length of the valid UTF-8 sequence at s[0..n), 0 if invalid (RFC 3629:
 * no overlongs, no surrogates, nothing above U+10FFFF). */
static size_t utf8_seq(const unsigned char *s, size_t n) {
    unsigned char c = s[0];
    if (c < 0x80) return 1;
    size_t len;
    uint32_t min, cp;
    if ((c & 0xE0) == 0xC0) len = 2, min = 0x80, cp = c & 0x1F;
    else if ((c & 0xF0) == 0xE0) len = 3, min = 0x800, cp = c & 0x0F;
    else if ((c & 0xF8) == 0xF0) len = 4, min = 0x10000, cp = c & 0x07;
    else return 0;
    if (len > n) return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80) return 0;
        cp = cp << 6 | (s[i] & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
    return len;
}

void srv_utf8_sanitize(nm_buf *b, const char *s, size_t n) {
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        size_t k = utf8_seq(p + i, n - i);
        if (k == 0) {
            nm_buf_push(b, "\xEF\xBF\xBD", 3);
            i++;
        } else {
            nm_buf_push(b, p + i, k);
            i += k;
        }
    }
}

/* ------------------------------------------------------------------------ */
/* adapter stacks                                                           */
/* ------------------------------------------------------------------------ */

bool srv_valid_name(const srv_lib *lib, const char *name) {
    size_t n = strlen(name);
    if (n == 0 || n > 64) return false;
    for (size_t i = 0; i < n; i++) {
        char c = name[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
                  c == '-' || c == '.';
        if (!ok) return false;
    }
    if (strcmp(name, "base") == 0) return false;
    if (lib && lib->model_id && strcmp(name, lib->model_id) == 0) return false;
    return true;
}

static int32_t find_adapter(const srv_lib *lib, const char *name, size_t len) {
    for (size_t i = 0; i < lib->n_adapters; i++)
        if (strlen(lib->adapters[i].name) == len && memcmp(lib->adapters[i].name, name, len) == 0)
            return (int32_t)i;
    return -1;
}

static const srv_named_stack *find_stack(const srv_lib *lib, const char *name, size_t len) {
    for (size_t i = 0; i < lib->n_stacks; i++)
        if (strlen(lib->stacks[i].name) == len && memcmp(lib->stacks[i].name, name, len) == 0)
            return &lib->stacks[i];
    return NULL;
}

static bool stack_push(srv_stack *st, int32_t adapter, float scale, const char *param, srv_error *e) {
    if (st->n >= SRV_MAX_STACK) {
        srv_bad(e, param, "an adapter stack holds at most %d adapters", SRV_MAX_STACK);
        return false;
    }
    st->item[st->n].adapter = adapter;
    st->item[st->n].scale = scale;
    st->n++;
    return true;
}

static bool valid_scale(double v) { return isfinite(v) && fabs(v) <= 100.0; }

/* "NAME" or "NAME:SCALE" at s[0..len). */
static bool stack_item(const srv_lib *lib, const char *s, size_t len, const char *param, const char *whole,
                       srv_stack *st, srv_error *e) {
    const char *colon = memchr(s, ':', len);
    size_t name_len = colon ? (size_t)(colon - s) : len;
    float scale = 1.0f;
    if (colon) {
        char num[64];
        size_t nl = len - name_len - 1;
        if (nl == 0 || nl >= sizeof num) {
            srv_bad(e, param, "bad adapter scale in '%s'", whole);
            return false;
        }
        memcpy(num, colon + 1, nl);
        num[nl] = 0;
        char *end;
        double v = strtod(num, &end);
        if (*end || !valid_scale(v)) {
            srv_bad(e, param, "bad adapter scale '%s' in '%s' (a number between -100 and 100)", num, whole);
            return false;
        }
        scale = (float)v;
    }
    int32_t a = find_adapter(lib, s, name_len);
    if (a < 0) {
        srv_error_set(e, 404, "invalid_request_error", "model_not_found", param,
                      "unknown adapter '%.*s' in '%s' (GET /v1/models lists the loaded ones)", (int)name_len, s,
                      whole);
        return false;
    }
    return stack_push(st, a, scale, param, e);
}

static bool parse_stack(const srv_lib *lib, const char *spec, bool first_may_be_base, const char *param,
                        srv_stack *out, srv_error *e) {
    memset(out, 0, sizeof *out);
    const char *p = spec;
    bool first = true;
    for (;;) {
        const char *plus = strchr(p, '+');
        size_t len = plus ? (size_t)(plus - p) : strlen(p);
        if (len == 0) {
            srv_bad(e, param, "empty name in '%s'", spec);
            return false;
        }
        const srv_named_stack *ns = NULL;
        if (first && first_may_be_base &&
            ((len == 4 && memcmp(p, "base", 4) == 0) ||
             (lib->model_id && strlen(lib->model_id) == len && memcmp(p, lib->model_id, len) == 0))) {
            /* the base model: nothing to add */
        } else if (first && first_may_be_base && (ns = find_stack(lib, p, len)) != NULL) {
            *out = ns->stack;
        } else if (!stack_item(lib, p, len, param, spec, out, e)) {
            if (first && e->http == 404 && strcmp(param, "model") == 0)
                srv_error_set(e, 404, "invalid_request_error", "model_not_found", param,
                              "The model '%s' does not exist (GET /v1/models lists the base model, the adapters and "
                              "the named stacks)",
                              spec);
            return false;
        }
        first = false;
        if (!plus) break;
        p = plus + 1;
    }
    return true;
}

bool srv_resolve_model(const srv_lib *lib, const char *model, srv_stack *out, srv_error *e) {
    if (!model || !*model) {
        memset(out, 0, sizeof *out);
        return true;
    }
    return parse_stack(lib, model, true, "model", out, e);
}

bool srv_parse_stack_spec(const srv_lib *lib, const char *spec, srv_stack *out, srv_error *e) {
    return parse_stack(lib, spec, true, "stack", out, e);
}

bool srv_resolve_adapters(const srv_lib *lib, const json_t *arr, srv_stack *st, srv_error *e) {
    if (!json_is_array(arr)) {
        srv_bad(e, "adapters", "'adapters' must be an array of {\"name\": string, \"scale\": number}");
        return false;
    }
    size_t i;
    const json_t *it;
    json_array_foreach(arr, i, it) {
        if (!json_is_object(it)) {
            srv_bad(e, "adapters", "adapters[%zu] must be an object {\"name\": string, \"scale\": number}", i);
            return false;
        }
        const json_t *name = json_object_get(it, "name");
        const json_t *scale = json_object_get(it, "scale");
        if (!json_is_string(name)) {
            srv_bad(e, "adapters", "adapters[%zu].name must be a string", i);
            return false;
        }
        double sc = 1.0;
        if (scale && !json_is_null(scale)) {
            if (!json_is_number(scale) || !valid_scale(json_number_value(scale))) {
                srv_bad(e, "adapters", "adapters[%zu].scale must be a number between -100 and 100", i);
                return false;
            }
            sc = json_number_value(scale);
        }
        const char *nm = json_string_value(name);
        size_t nl = json_string_length(name);
        int32_t a = find_adapter(lib, nm, nl);
        if (a < 0) {
            srv_error_set(e, 404, "invalid_request_error", "model_not_found", "adapters",
                          "unknown adapter '%.*s' (GET /v1/models lists the loaded ones)", (int)(nl > 200 ? 200 : nl),
                          nm);
            return false;
        }
        if (!stack_push(st, a, (float)sc, "adapters", e)) return false;
    }
    return true;
}

bool srv_stack_equal(const srv_stack *a, const srv_stack *b) {
    if (a->n != b->n) return false;
    for (int32_t i = 0; i < a->n; i++)
        if (a->item[i].adapter != b->item[i].adapter || a->item[i].scale != b->item[i].scale) return false;
    return true;
}

void srv_stack_str(const srv_lib *lib, const srv_stack *st, char *buf, size_t cap) {
    size_t n = (size_t)snprintf(buf, cap, "base");
    for (int32_t i = 0; i < st->n && n < cap; i++) {
        const char *name = lib->adapters[st->item[i].adapter].name;
        if (st->item[i].scale == 1.0f) n += (size_t)snprintf(buf + n, cap - n, "+%s", name);
        else n += (size_t)snprintf(buf + n, cap - n, "+%s:%g", name, (double)st->item[i].scale);
    }
}

/* ------------------------------------------------------------------------ */
/* request parsing                                                          */
/* ------------------------------------------------------------------------ */

/* The field, or NULL when absent or null. */
static const json_t *field(const json_t *o, const char *key) {
    const json_t *v = json_object_get(o, key);
    return v && !json_is_null(v) ? v : NULL;
}

static bool get_bool(const json_t *o, const char *key, bool *out, srv_error *e) {
    const json_t *v = field(o, key);
    if (!v) return true;
    if (!json_is_boolean(v)) {
        srv_bad(e, key, "'%s' must be a boolean", key);
        return false;
    }
    *out = json_is_true(v);
    return true;
}

static bool get_num(const json_t *o, const char *key, double lo, double hi, bool *given, double *out, srv_error *e) {
    const json_t *v = field(o, key);
    if (given) *given = v != NULL;
    if (!v) return true;
    if (!json_is_number(v)) {
        srv_bad(e, key, "'%s' must be a number", key);
        return false;
    }
    double d = json_number_value(v);
    if (!(d >= lo && d <= hi)) {
        srv_bad(e, key, "'%s' must be between %g and %g (got %g)", key, lo, hi, d);
        return false;
    }
    *out = d;
    return true;
}

static bool get_int(const json_t *o, const char *key, long long lo, long long hi, bool *given, long long *out,
                    srv_error *e) {
    const json_t *v = field(o, key);
    if (given) *given = v != NULL;
    if (!v) return true;
    if (!json_is_integer(v)) {
        srv_bad(e, key, "'%s' must be an integer", key);
        return false;
    }
    long long d = json_integer_value(v);
    if (d < lo || d > hi) {
        srv_bad(e, key, "'%s' must be between %lld and %lld (got %lld)", key, lo, hi, d);
        return false;
    }
    *out = d;
    return true;
}

static bool parse_stop(const json_t *o, srv_request *r, srv_error *e) {
    const json_t *v = field(o, "stop");
    if (!v) return true;
    if (json_is_string(v)) {
        if (json_string_length(v) == 0) return true;
        r->stop[r->n_stop++] = nm_strndup(json_string_value(v), json_string_length(v));
        return true;
    }
    if (!json_is_array(v)) {
        srv_bad(e, "stop", "'stop' must be a string or an array of strings");
        return false;
    }
    if (json_array_size(v) > SRV_MAX_STOP) {
        srv_bad(e, "stop", "'stop' holds at most %d strings", SRV_MAX_STOP);
        return false;
    }
    size_t i;
    const json_t *it;
    json_array_foreach(v, i, it) {
        if (!json_is_string(it)) {
            srv_bad(e, "stop", "stop[%zu] must be a string", i);
            return false;
        }
        if (json_string_length(it) == 0) continue;
        r->stop[r->n_stop++] = nm_strndup(json_string_value(it), json_string_length(it));
    }
    return true;
}

static bool parse_logit_bias(const srv_env *env, const json_t *o, srv_request *r, srv_error *e) {
    const json_t *v = field(o, "logit_bias");
    if (!v) return true;
    if (!json_is_object(v)) {
        srv_bad(e, "logit_bias", "'logit_bias' must be an object mapping token ids to numbers");
        return false;
    }
    size_t n = json_object_size(v);
    if (n > 1024) {
        srv_bad(e, "logit_bias", "'logit_bias' holds at most 1024 tokens");
        return false;
    }
    r->bias = nm_calloc(n ? n : 1, sizeof *r->bias);
    if (!r->bias) {
        srv_error_set(e, 500, "server_error", NULL, NULL, "out of memory");
        return false;
    }
    const char *key;
    const json_t *val;
    json_object_foreach((json_t *)v, key, val) {
        char *end;
        long id = strtol(key, &end, 10);
        if (!*key || *end || key[0] == '-' || key[0] == '+' || id < 0 || id >= env->n_vocab) {
            srv_bad(e, "logit_bias", "logit_bias key '%.40s' is not a token id in [0, %d)", key, env->n_vocab);
            return false;
        }
        if (!json_is_number(val) || !(json_number_value(val) >= -100 && json_number_value(val) <= 100)) {
            srv_bad(e, "logit_bias", "logit_bias['%s'] must be a number between -100 and 100", key);
            return false;
        }
        double b = json_number_value(val);
        r->bias[r->n_bias].token = (int32_t)id;
        /* As OpenAI documents: -100 bans the token. */
        r->bias[r->n_bias].bias = b <= -100 ? -INFINITY : (float)b;
        r->n_bias++;
    }
    return true;
}

/* The text of a chat message's content: a string, or an array of
 * {"type": "text", "text": ...} parts (concatenated). */
static bool message_text(const json_t *content, size_t idx, nm_buf *out, srv_error *e) {
    if (!content || json_is_null(content)) return true;
    if (json_is_string(content)) {
        nm_buf_push(out, json_string_value(content), json_string_length(content));
        return true;
    }
    if (!json_is_array(content)) {
        srv_bad(e, "messages", "messages[%zu].content must be a string or an array of text parts", idx);
        return false;
    }
    size_t i;
    const json_t *part;
    json_array_foreach(content, i, part) {
        const json_t *type = json_is_object(part) ? json_object_get(part, "type") : NULL;
        const json_t *text = json_is_object(part) ? json_object_get(part, "text") : NULL;
        if (!json_is_string(type) || strcmp(json_string_value(type), "text") != 0) {
            srv_bad(e, "messages", "messages[%zu].content[%zu]: only {\"type\": \"text\", \"text\": ...} parts are "
                    "supported", idx, i);
            return false;
        }
        if (!json_is_string(text)) {
            srv_bad(e, "messages", "messages[%zu].content[%zu].text must be a string", idx, i);
            return false;
        }
        nm_buf_push(out, json_string_value(text), json_string_length(text));
    }
    return true;
}

static bool chat_prompt(const srv_env *env, const json_t *o, srv_request *r, srv_error *e) {
    const json_t *msgs = json_object_get(o, "messages");
    if (!msgs || json_is_null(msgs)) {
        srv_bad(e, "messages", "'messages' is required");
        return false;
    }
    if (!json_is_array(msgs) || json_array_size(msgs) == 0) {
        srv_bad(e, "messages", "'messages' must be a non-empty array of {\"role\", \"content\"} objects");
        return false;
    }
    size_t n = json_array_size(msgs);
    if (n > 4096) {
        srv_bad(e, "messages", "at most 4096 messages");
        return false;
    }
    nm_chat_msg *cm = nm_calloc(n, sizeof *cm);
    nm_buf *texts = nm_calloc(n, sizeof *texts);
    bool ok = cm && texts;
    if (!ok) srv_error_set(e, 500, "server_error", NULL, NULL, "out of memory");
    for (size_t i = 0; ok && i < n; i++) {
        const json_t *m = json_array_get(msgs, i);
        if (!json_is_object(m)) {
            srv_bad(e, "messages", "messages[%zu] must be an object", i);
            ok = false;
            break;
        }
        const json_t *role = json_object_get(m, "role");
        if (!json_is_string(role)) {
            srv_bad(e, "messages", "messages[%zu].role must be a string", i);
            ok = false;
            break;
        }
        const char *rs = json_string_value(role);
        if (strcmp(rs, "developer") == 0) rs = "system"; /* OpenAI's newer name for it */
        if (strcmp(rs, "system") != 0 && strcmp(rs, "user") != 0 && strcmp(rs, "assistant") != 0 &&
            strcmp(rs, "tool") != 0) {
            srv_bad(e, "messages", "messages[%zu].role must be system, developer, user, assistant or tool", i);
            ok = false;
            break;
        }
        nm_buf_init(&texts[i]);
        if (!message_text(json_object_get(m, "content"), i, &texts[i], e)) {
            ok = false;
            break;
        }
        nm_buf_push(&texts[i], "", 1);
        if (texts[i].oom) {
            srv_error_set(e, 500, "server_error", NULL, NULL, "out of memory");
            ok = false;
            break;
        }
        if (strlen((const char *)texts[i].data) != texts[i].len - 1) {
            srv_bad(e, "messages", "messages[%zu].content contains a NUL character", i);
            ok = false;
            break;
        }
        cm[i].role = rs;
        cm[i].content = (const char *)texts[i].data;
    }
    char *rendered = NULL;
    if (ok) {
        nm_err err = {0};
        if (nm_chat_render(env->tmpl, cm, n, true, &rendered, &err) != NM_OK) {
            srv_bad(e, "messages", "cannot render the conversation: %s", err.msg);
            ok = false;
        }
    }
    if (ok) {
        nm_err err = {0};
        if (nm_tokenize(env->vocab, rendered, strlen(rendered), true, true, &r->prompt, &r->n_prompt, &err) != NM_OK) {
            srv_bad(e, "messages", "cannot tokenize the conversation: %s", err.msg);
            ok = false;
        }
    }
    free(rendered);
    if (texts)
        for (size_t i = 0; i < n; i++) nm_buf_deinit(&texts[i]);
    free(texts);
    free(cm);
    return ok;
}

static bool completion_prompt(const srv_env *env, const json_t *o, srv_request *r, srv_error *e) {
    const json_t *p = json_object_get(o, "prompt");
    if (!p || json_is_null(p)) {
        srv_bad(e, "prompt", "'prompt' is required");
        return false;
    }
    /* A list holding one string is the same as the string (what clients
     * send for a batch of one). */
    if (json_is_array(p) && json_array_size(p) == 1 && json_is_string(json_array_get(p, 0)))
        p = json_array_get(p, 0);
    if (json_is_string(p)) {
        nm_err err = {0};
        if (strlen(json_string_value(p)) != json_string_length(p)) {
            srv_bad(e, "prompt", "'prompt' contains a NUL character");
            return false;
        }
        if (nm_tokenize(env->vocab, json_string_value(p), json_string_length(p), true, true, &r->prompt, &r->n_prompt,
                        &err) != NM_OK) {
            srv_bad(e, "prompt", "cannot tokenize the prompt: %s", err.msg);
            return false;
        }
        return true;
    }
    if (json_is_array(p)) {
        size_t n = json_array_size(p);
        for (size_t i = 0; i < n; i++)
            if (!json_is_integer(json_array_get(p, i))) {
                srv_bad(e, "prompt",
                        "'prompt' must be a string, an array of one string or an array of token ids (several prompts "
                        "in one request are not supported)");
                return false;
            }
        r->prompt = nm_calloc(n ? n : 1, sizeof *r->prompt);
        if (!r->prompt) {
            srv_error_set(e, 500, "server_error", NULL, NULL, "out of memory");
            return false;
        }
        for (size_t i = 0; i < n; i++) {
            long long id = json_integer_value(json_array_get(p, i));
            if (id < 0 || id >= env->n_vocab) {
                srv_bad(e, "prompt", "prompt[%zu] = %lld is not a token id in [0, %d)", i, id, env->n_vocab);
                return false;
            }
            r->prompt[i] = (int32_t)id;
        }
        r->n_prompt = n;
        return true;
    }
    srv_bad(e, "prompt", "'prompt' must be a string, an array of one string or an array of token ids");
    return false;
}

static bool parse_fields(const srv_env *env, srv_kind kind, const json_t *o, srv_request *r, srv_error *e) {
    /* Types and ranges of every field first, then the model, then the
     * prompt (which costs a tokenization). */
    const json_t *model = json_object_get(o, "model");
    if (model && !json_is_null(model) && !json_is_string(model)) {
        srv_bad(e, "model", "'model' must be a string");
        return false;
    }
    if (!get_bool(o, "stream", &r->stream, e)) return false;
    const json_t *so = field(o, "stream_options");
    if (so) {
        if (!json_is_object(so)) {
            srv_bad(e, "stream_options", "'stream_options' must be an object");
            return false;
        }
        if (!get_bool(so, "include_usage", &r->include_usage, e)) return false;
    }
    long long n = 1;
    if (!get_int(o, "n", 1, 128, NULL, &n, e)) return false;
    if (n != 1) {
        srv_bad(e, "n", "only n = 1 is supported");
        return false;
    }
    bool given;
    long long max_tokens = 0;
    if (!get_int(o, "max_tokens", 1, INT32_MAX, &given, &max_tokens, e)) return false;
    if (!given && kind == SRV_CHAT && !get_int(o, "max_completion_tokens", 1, INT32_MAX, &given, &max_tokens, e))
        return false;
    double d;
    nm_sampler_params *sp = &r->sp;
    *sp = nm_sampler_params_default();
    if (!get_num(o, "temperature", 0, 2, NULL, &d, e)) return false;
    if (field(o, "temperature")) sp->temperature = (float)d;
    if (!get_num(o, "top_p", 0, 1, NULL, &d, e)) return false;
    if (field(o, "top_p")) {
        if (d <= 0) sp->top_k = 1; /* nothing but the most likely token */
        else sp->top_p = (float)d;
    }
    if (!get_num(o, "presence_penalty", -2, 2, NULL, &d, e)) return false;
    if (field(o, "presence_penalty")) sp->presence_penalty = (float)d;
    if (!get_num(o, "frequency_penalty", -2, 2, NULL, &d, e)) return false;
    if (field(o, "frequency_penalty")) sp->frequency_penalty = (float)d;
    /* llama.cpp's extensions */
    long long k;
    if (!get_int(o, "top_k", 0, INT32_MAX, NULL, &k, e)) return false;
    if (field(o, "top_k")) sp->top_k = (int32_t)k;
    if (!get_num(o, "min_p", 0, 1, NULL, &d, e)) return false;
    if (field(o, "min_p")) sp->min_p = (float)d;
    if (!get_num(o, "repeat_penalty", 0, 10, NULL, &d, e)) return false;
    if (field(o, "repeat_penalty")) {
        if (d <= 0) {
            srv_bad(e, "repeat_penalty", "'repeat_penalty' must be positive");
            return false;
        }
        sp->repeat_penalty = (float)d;
    }
    long long seed;
    if (!get_int(o, "seed", INT64_MIN, INT64_MAX, &given, &seed, e)) return false;
    if (given) sp->seed = (uint64_t)seed;
    if (!parse_stop(o, r, e)) return false;
    if (!parse_logit_bias(env, o, r, e)) return false;
    if (kind == SRV_CHAT) {
        if (!get_bool(o, "logprobs", &r->logprobs, e)) return false;
        long long tl = 0;
        if (!get_int(o, "top_logprobs", 0, SRV_MAX_TOP_LOGPROBS, &given, &tl, e)) return false;
        if (given && !r->logprobs) {
            srv_bad(e, "top_logprobs", "'top_logprobs' needs 'logprobs': true");
            return false;
        }
        r->top_logprobs = (int32_t)tl;
        const json_t *tools = field(o, "tools");
        if (tools && (!json_is_array(tools) || json_array_size(tools) > 0)) {
            srv_bad(e, "tools", "tools (function calling) are not supported");
            return false;
        }
        const json_t *rf = field(o, "response_format");
        if (rf) {
            const json_t *t = json_is_object(rf) ? json_object_get(rf, "type") : NULL;
            if (!json_is_string(t) || strcmp(json_string_value(t), "text") != 0) {
                srv_bad(e, "response_format", "only response_format {\"type\": \"text\"} is supported");
                return false;
            }
        }
    } else {
        long long lp = 0;
        if (!get_int(o, "logprobs", 0, SRV_MAX_TOP_LOGPROBS, &given, &lp, e)) return false;
        r->logprobs = given;
        r->top_logprobs = (int32_t)lp;
        bool echo = false;
        if (!get_bool(o, "echo", &echo, e)) return false;
        if (echo) {
            srv_bad(e, "echo", "'echo' is not supported");
            return false;
        }
        const json_t *suffix = field(o, "suffix");
        if (suffix && (!json_is_string(suffix) || json_string_length(suffix) > 0)) {
            srv_bad(e, "suffix", "'suffix' (insertion) is not supported");
            return false;
        }
    }
    const json_t *adapters = field(o, "adapters");
    if (adapters && !json_is_array(adapters)) {
        srv_bad(e, "adapters", "'adapters' must be an array of {\"name\": string, \"scale\": number}");
        return false;
    }

    /* the model and the adapter stack */
    const char *mname = model && json_is_string(model) ? json_string_value(model) : "";
    r->model = nm_strdup(*mname ? mname : env->lib->model_id);
    if (!r->model) {
        srv_error_set(e, 500, "server_error", NULL, NULL, "out of memory");
        return false;
    }
    if (!srv_resolve_model(env->lib, mname, &r->stack, e)) return false;
    if (adapters && !srv_resolve_adapters(env->lib, adapters, &r->stack, e)) return false;

    /* the prompt and its length */
    if (!(kind == SRV_CHAT ? chat_prompt(env, o, r, e) : completion_prompt(env, o, r, e))) return false;
    const char *pparam = kind == SRV_CHAT ? "messages" : "prompt";
    if (r->n_prompt == 0) {
        srv_bad(e, pparam, "the prompt is empty");
        return false;
    }
    if (r->n_prompt >= (size_t)env->n_ctx) {
        srv_error_set(e, 400, "invalid_request_error", "context_length_exceeded", pparam,
                      "the prompt is %zu tokens; this server's context is %d tokens per request, so it must be "
                      "shorter than that",
                      r->n_prompt, env->n_ctx);
        return false;
    }
    int32_t room = env->n_ctx - (int32_t)r->n_prompt;
    if (max_tokens > room) {
        srv_error_set(e, 400, "invalid_request_error", "context_length_exceeded", "max_tokens",
                      "this server's context is %d tokens per request; you asked for %zu in the prompt and %lld to "
                      "generate, %lld in all",
                      env->n_ctx, r->n_prompt, max_tokens, (long long)r->n_prompt + max_tokens);
        return false;
    }
    r->max_tokens = max_tokens ? (int32_t)max_tokens : room;

    sp->stop = (const char *const *)r->stop;
    sp->n_stop = r->n_stop;
    sp->logit_bias = r->bias;
    sp->n_logit_bias = r->n_bias;
    nm_err err = {0};
    if (nm_sampler_new(sp, env->n_vocab, &r->sampler, &err) != NM_OK) {
        srv_bad(e, NULL, "bad sampling parameters: %s", err.msg);
        return false;
    }
    return true;
}

bool srv_parse_request(const srv_env *env, srv_kind kind, const char *body, size_t len, srv_request *out,
                       srv_error *e) {
    memset(out, 0, sizeof *out);
    out->kind = kind;
    json_error_t jerr;
    /* Duplicate keys are rejected: which of two values would win is
     * a guess either way. */
    json_t *o = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!o) {
        srv_bad(e, NULL, "the body is not valid JSON: %s (line %d, column %d)", jerr.text, jerr.line, jerr.column);
        return false;
    }
    bool ok;
    if (!json_is_object(o)) {
        srv_bad(e, NULL, "the body must be a JSON object");
        ok = false;
    } else {
        ok = parse_fields(env, kind, o, out, e);
    }
    json_decref(o);
    if (!ok) srv_request_deinit(out);
    return ok;
}

void srv_request_deinit(srv_request *r) {
    free(r->model);
    free(r->prompt);
    for (size_t i = 0; i < r->n_stop; i++) free(r->stop[i]);
    free(r->bias);
    nm_sampler_free(r->sampler);
    memset(r, 0, sizeof *r);
}

/* ------------------------------------------------------------------------ */
/* responses                                                                */
/* ------------------------------------------------------------------------ */

static json_t *usage_json(const srv_job *j) {
    json_t *u = json_object();
    json_object_set_new(u, "prompt_tokens", json_integer((json_int_t)j->req.n_prompt));
    json_object_set_new(u, "completion_tokens", json_integer(j->n_gen));
    json_object_set_new(u, "total_tokens", json_integer((json_int_t)j->req.n_prompt + j->n_gen));
    json_t *pd = json_object();
    json_object_set_new(pd, "cached_tokens", json_integer(j->n_cached));
    json_object_set_new(u, "prompt_tokens_details", pd);
    return u;
}

static json_t *token_json(const nm_vocab *v, int32_t id, bool with_bytes, json_t **bytes_out) {
    char piece[256];
    int32_t n = nm_token_to_piece(v, id, piece, sizeof piece, false);
    if (n < 0) n = 0;
    if (with_bytes) {
        json_t *b = json_array();
        for (int32_t i = 0; i < n; i++) json_array_append_new(b, json_integer((unsigned char)piece[i]));
        *bytes_out = b;
    }
    return json_text(piece, (size_t)n);
}

/* OpenAI reports logprobs as floats; -inf (a banned token) is not JSON. */
static json_t *lp_json(float lp) { return json_real(isfinite(lp) ? (double)lp : -9999.0); }

/* Chat shape: {"content": [{"token","logprob","bytes","top_logprobs":[...]}]} */
static json_t *chat_logprobs(const srv_job *j, const nm_vocab *v, int32_t from, int32_t to) {
    json_t *content = json_array();
    for (int32_t i = from; i < to; i++) {
        const srv_token_lp *t = &j->lps[i];
        json_t *e = json_object(), *bytes;
        json_object_set_new(e, "token", token_json(v, t->id, true, &bytes));
        json_object_set_new(e, "logprob", lp_json(t->lp));
        json_object_set_new(e, "bytes", bytes);
        json_t *top = json_array();
        for (int32_t k = 0; k < t->n_top; k++) {
            json_t *te = json_object(), *tb;
            json_object_set_new(te, "token", token_json(v, t->top_id[k], true, &tb));
            json_object_set_new(te, "logprob", lp_json(t->top_lp[k]));
            json_object_set_new(te, "bytes", tb);
            json_array_append_new(top, te);
        }
        json_object_set_new(e, "top_logprobs", top);
        json_array_append_new(content, e);
    }
    json_t *o = json_object();
    json_object_set_new(o, "content", content);
    return o;
}

/* Completion shape: {"tokens", "token_logprobs", "top_logprobs", "text_offset"} */
static json_t *completion_logprobs(const srv_job *j, const nm_vocab *v, int32_t from, int32_t to) {
    json_t *tokens = json_array(), *tlp = json_array(), *top = json_array(), *off = json_array();
    size_t pos = 0;
    for (int32_t i = 0; i < to; i++) {
        const srv_token_lp *t = &j->lps[i];
        char piece[256];
        int32_t n = nm_token_to_piece(v, t->id, piece, sizeof piece, false);
        if (i >= from) {
            json_array_append_new(tokens, json_text(piece, n > 0 ? (size_t)n : 0));
            json_array_append_new(tlp, lp_json(t->lp));
            json_t *m = json_object();
            for (int32_t k = 0; k < t->n_top; k++) {
                char tp[256];
                int32_t tn = nm_token_to_piece(v, t->top_id[k], tp, sizeof tp - 1, false);
                json_t *key = json_text(tp, tn > 0 ? (size_t)tn : 0);
                json_object_set_new(m, json_string_value(key), lp_json(t->top_lp[k]));
                json_decref(key);
            }
            json_array_append_new(top, m);
            json_array_append_new(off, json_integer((json_int_t)pos));
        }
        if (n > 0) pos += (size_t)n;
    }
    json_t *o = json_object();
    json_object_set_new(o, "tokens", tokens);
    json_object_set_new(o, "token_logprobs", tlp);
    json_object_set_new(o, "top_logprobs", top);
    json_object_set_new(o, "text_offset", off);
    return o;
}

static json_t *logprobs_json(const srv_job *j, const nm_vocab *v, int32_t from, int32_t to) {
    if (!j->req.logprobs) return json_null();
    return j->req.kind == SRV_CHAT ? chat_logprobs(j, v, from, to) : completion_logprobs(j, v, from, to);
}

char *srv_response_json(const srv_job *j, const nm_vocab *v) {
    json_t *root = json_object();
    bool chat = j->req.kind == SRV_CHAT;
    json_object_set_new(root, "id", json_string(j->id));
    json_object_set_new(root, "object", json_string(chat ? "chat.completion" : "text_completion"));
    json_object_set_new(root, "created", json_integer(j->created));
    json_object_set_new(root, "model", json_text(j->req.model, strlen(j->req.model)));
    json_t *choice = json_object();
    json_object_set_new(choice, "index", json_integer(0));
    json_t *text = json_stringn(j->text.len ? (const char *)j->text.data : "", j->text.len);
    if (chat) {
        json_t *msg = json_object();
        json_object_set_new(msg, "role", json_string("assistant"));
        json_object_set_new(msg, "content", text);
        json_object_set_new(choice, "message", msg);
    } else {
        json_object_set_new(choice, "text", text);
    }
    json_object_set_new(choice, "logprobs", logprobs_json(j, v, 0, j->n_lps));
    json_object_set_new(choice, "finish_reason", json_string(j->finish ? j->finish : "stop"));
    json_t *choices = json_array();
    json_array_append_new(choices, choice);
    json_object_set_new(root, "choices", choices);
    json_object_set_new(root, "usage", usage_json(j));
    char *s = json_dumps(root, JSON_COMPACT);
    json_decref(root);
    return s;
}

/* ---- stream chunks ---- */

static json_t *chunk_root(const srv_job *j) {
    json_t *root = json_object();
    bool chat = j->req.kind == SRV_CHAT;
    json_object_set_new(root, "id", json_string(j->id));
    json_object_set_new(root, "object", json_string(chat ? "chat.completion.chunk" : "text_completion"));
    json_object_set_new(root, "created", json_integer(j->created));
    json_object_set_new(root, "model", json_text(j->req.model, strlen(j->req.model)));
    return root;
}

static void sse_event(srv_job *j, json_t *root) {
    char *s = json_dumps(root, JSON_COMPACT);
    json_decref(root);
    if (!s) {
        j->sse.oom = true;
        return;
    }
    nm_buf_push(&j->sse, "data: ", 6);
    nm_buf_push(&j->sse, s, strlen(s));
    nm_buf_push(&j->sse, "\n\n", 2);
    free(s);
}

void srv_sse_role(srv_job *j) {
    if (j->req.kind != SRV_CHAT) return;
    json_t *root = chunk_root(j);
    json_t *delta = json_object();
    json_object_set_new(delta, "role", json_string("assistant"));
    json_object_set_new(delta, "content", json_string(""));
    json_t *choice = json_object();
    json_object_set_new(choice, "index", json_integer(0));
    json_object_set_new(choice, "delta", delta);
    json_object_set_new(choice, "logprobs", json_null());
    json_object_set_new(choice, "finish_reason", json_null());
    json_t *choices = json_array();
    json_array_append_new(choices, choice);
    json_object_set_new(root, "choices", choices);
    sse_event(j, root);
}

/* text may be empty: the last chunk carries only finish_reason.  Chunks
 * carry the logprobs of tokens [lp_from, lp_to). */
void srv_sse_delta(srv_job *j, const nm_vocab *v, const char *text, size_t n, int32_t lp_from, int32_t lp_to,
                   const char *finish) {
    json_t *root = chunk_root(j);
    json_t *choice = json_object();
    json_object_set_new(choice, "index", json_integer(0));
    json_t *t = json_stringn(n ? text : "", n);
    if (j->req.kind == SRV_CHAT) {
        json_t *delta = json_object();
        if (n || !finish) json_object_set_new(delta, "content", t);
        else json_decref(t);
        json_object_set_new(choice, "delta", delta);
    } else {
        json_object_set_new(choice, "text", t);
    }
    json_object_set_new(choice, "logprobs", lp_to > lp_from ? logprobs_json(j, v, lp_from, lp_to) : json_null());
    json_object_set_new(choice, "finish_reason", finish ? json_string(finish) : json_null());
    json_t *choices = json_array();
    json_array_append_new(choices, choice);
    json_object_set_new(root, "choices", choices);
    sse_event(j, root);
}

void srv_sse_usage(srv_job *j) {
    json_t *root = chunk_root(j);
    json_object_set_new(root, "choices", json_array());
    json_object_set_new(root, "usage", usage_json(j));
    sse_event(j, root);
}

void srv_sse_error(srv_job *j, const srv_error *e) {
    char *s = srv_error_json(e);
    if (!s) {
        j->sse.oom = true;
        return;
    }
    nm_buf_push(&j->sse, "data: ", 6);
    nm_buf_push(&j->sse, s, strlen(s));
    nm_buf_push(&j->sse, "\n\n", 2);
    free(s);
}

void srv_sse_done(srv_job *j) { nm_buf_push(&j->sse, "data: [DONE]\n\n", 14); }
