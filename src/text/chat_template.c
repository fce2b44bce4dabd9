/*
 * chat_template.c - conversations rendered into prompts.
 *
 * GGUF files carry their chat format as a Jinja program
 * (tokenizer.chat_template).  Like llama.cpp's llama_chat_apply_template we
 * run no Jinja: we recognise the program by telling substrings and render
 * the format it implements with hand-written code.  The renderings below
 * reproduce llama.cpp's byte for byte (tests/test_chat_template.c holds its
 * expected outputs), quirks included (gemma folds the system message into the
 * first user turn; llama-3 and gemma trim contents; llama-2 writes no BOS
 * before the first turn, because the tokenizer adds it).
 */
#include "base/base.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>

typedef struct tmpl_name {
    const char *name;
    nm_chat_template t;
} tmpl_name;

/* Canonical names first (nm_chat_template_name returns the first match). */
static const tmpl_name NAMES[] = {
    {"chatml", NM_CHAT_TEMPLATE_CHATML},
    {"llama2", NM_CHAT_TEMPLATE_LLAMA2},
    {"llama2-sys", NM_CHAT_TEMPLATE_LLAMA2_SYS},
    {"llama2-sys-bos", NM_CHAT_TEMPLATE_LLAMA2_SYS_BOS},
    {"llama2-sys-strip", NM_CHAT_TEMPLATE_LLAMA2_SYS_STRIP},
    {"mistral-v1", NM_CHAT_TEMPLATE_MISTRAL_V1},
    {"mistral-v3", NM_CHAT_TEMPLATE_MISTRAL_V3},
    {"mistral-v3-tekken", NM_CHAT_TEMPLATE_MISTRAL_V3_TEKKEN},
    {"mistral-v7", NM_CHAT_TEMPLATE_MISTRAL_V7},
    {"mistral-v7-tekken", NM_CHAT_TEMPLATE_MISTRAL_V7_TEKKEN},
    {"llama3", NM_CHAT_TEMPLATE_LLAMA3},
    {"llama4", NM_CHAT_TEMPLATE_LLAMA4},
    {"phi3", NM_CHAT_TEMPLATE_PHI3},
    {"phi4", NM_CHAT_TEMPLATE_PHI4},
    {"zephyr", NM_CHAT_TEMPLATE_ZEPHYR},
    {"tinyllama", NM_CHAT_TEMPLATE_TINYLLAMA},
    {"falcon3", NM_CHAT_TEMPLATE_FALCON3},
    {"gemma", NM_CHAT_TEMPLATE_GEMMA},
    {"monarch", NM_CHAT_TEMPLATE_MONARCH},
    {"orion", NM_CHAT_TEMPLATE_ORION},
    {"openchat", NM_CHAT_TEMPLATE_OPENCHAT},
    {"vicuna", NM_CHAT_TEMPLATE_VICUNA},
    {"vicuna-orca", NM_CHAT_TEMPLATE_VICUNA_ORCA},
    {"deepseek", NM_CHAT_TEMPLATE_DEEPSEEK},
    {"deepseek2", NM_CHAT_TEMPLATE_DEEPSEEK2},
    {"deepseek3", NM_CHAT_TEMPLATE_DEEPSEEK3},
    {"command-r", NM_CHAT_TEMPLATE_COMMAND_R},
    {"chatglm3", NM_CHAT_TEMPLATE_CHATGLM3},
    {"chatglm4", NM_CHAT_TEMPLATE_CHATGLM4},
    {"glmedge", NM_CHAT_TEMPLATE_GLMEDGE},
    {"minicpm", NM_CHAT_TEMPLATE_MINICPM},
    {"exaone3", NM_CHAT_TEMPLATE_EXAONE3},
    {"granite", NM_CHAT_TEMPLATE_GRANITE},
    {"megrez", NM_CHAT_TEMPLATE_MEGREZ},
    {"bailing", NM_CHAT_TEMPLATE_BAILING},
    /* aliases */
    {"llama-2", NM_CHAT_TEMPLATE_LLAMA2},
    {"llama-3", NM_CHAT_TEMPLATE_LLAMA3},
    {"phi-3", NM_CHAT_TEMPLATE_PHI3},
    {"phi-4", NM_CHAT_TEMPLATE_PHI4},
    {"mistral", NM_CHAT_TEMPLATE_MISTRAL_V1},
};
#define N_NAMES (sizeof NAMES / sizeof NAMES[0])

nm_chat_template nm_chat_template_from_name(const char *name) {
    if (!name) return NM_CHAT_TEMPLATE_UNKNOWN;
    for (size_t i = 0; i < N_NAMES; i++)
        if (strcmp(NAMES[i].name, name) == 0) return NAMES[i].t;
    return NM_CHAT_TEMPLATE_UNKNOWN;
}

const char *nm_chat_template_name(nm_chat_template t) {
    for (size_t i = 0; i < N_NAMES; i++)
        if (NAMES[i].t == t) return NAMES[i].name;
    return NULL;
}

static bool has(const char *s, const char *needle) { return strstr(s, needle) != NULL; }

/* The order of the tests is llama.cpp's: several formats share markers, and
 * the first rule that matches decides.  Rules for formats nomoat does not
 * render still come first where llama.cpp has them, so that such a template
 * is reported unknown rather than mistaken for a later rule's format. */
nm_chat_template nm_chat_template_detect(const char *t) {
    if (!t) return NM_CHAT_TEMPLATE_UNKNOWN;
    nm_chat_template named = nm_chat_template_from_name(t);
    if (named != NM_CHAT_TEMPLATE_UNKNOWN) return named;

    if (has(t, "<|im_start|>")) {
        if (has(t, "<|im_sep|>")) return NM_CHAT_TEMPLATE_PHI4;
        if (has(t, "<end_of_utterance>")) return NM_CHAT_TEMPLATE_UNKNOWN; /* SmolVLM: not chatml */
        return NM_CHAT_TEMPLATE_CHATML;
    }
    if (strncmp(t, "mistral", 7) == 0 || has(t, "[INST]")) {
        if (has(t, "[SYSTEM_PROMPT]")) return NM_CHAT_TEMPLATE_MISTRAL_V7;
        /* Mistral's official v1, v3 and v3-tekken templates */
        if (has(t, "' [INST] ' + system_message") || has(t, "[AVAILABLE_TOOLS]")) {
            if (has(t, " [INST]")) return NM_CHAT_TEMPLATE_MISTRAL_V1;
            if (has(t, "\"[INST]\"")) return NM_CHAT_TEMPLATE_MISTRAL_V3_TEKKEN;
            return NM_CHAT_TEMPLATE_MISTRAL_V3;
        }
        /* llama-2 and the variants its fine-tunes introduced */
        if (has(t, "content.strip()")) return NM_CHAT_TEMPLATE_LLAMA2_SYS_STRIP;
        if (has(t, "bos_token + '[INST]")) return NM_CHAT_TEMPLATE_LLAMA2_SYS_BOS;
        if (has(t, "<<SYS>>")) return NM_CHAT_TEMPLATE_LLAMA2_SYS;
        return NM_CHAT_TEMPLATE_LLAMA2;
    }
    if (has(t, "<|assistant|>") && has(t, "<|end|>")) return NM_CHAT_TEMPLATE_PHI3;
    if (has(t, "[gMASK]<sop>")) return NM_CHAT_TEMPLATE_CHATGLM4;
    /* Deliberate departure from llama.cpp, which calls these glmedge: the
     * zephyr format written with eos_token (TinyLlama-Chat, zephyr-7b-beta,
     * stablelm-2-zephyr) ends every turn with the EOS text.  "</s>" is the
     * common case; nm_chat_template_of_gguf switches to zephyr when the
     * model's EOS is "<|endoftext|>". */
    if (has(t, "<|user|>") && has(t, "<|assistant|>") && has(t, "eos_token") && !has(t, "</s>"))
        return NM_CHAT_TEMPLATE_TINYLLAMA;
    if (has(t, "<|assistant|>") && has(t, "<|user|>"))
        return has(t, "</s>") ? NM_CHAT_TEMPLATE_FALCON3 : NM_CHAT_TEMPLATE_GLMEDGE;
    if (has(t, "<|{{ item['role'] }}|>") && has(t, "<|begin_of_image|>")) return NM_CHAT_TEMPLATE_GLMEDGE;
    if (has(t, "<|user|>") && has(t, "<|endoftext|>")) return NM_CHAT_TEMPLATE_ZEPHYR;
    if (has(t, "bos_token + message['role']")) return NM_CHAT_TEMPLATE_MONARCH;
    if (has(t, "<start_of_turn>")) return NM_CHAT_TEMPLATE_GEMMA;
    if (has(t, "'\\n\\nAssistant: ' + eos_token")) return NM_CHAT_TEMPLATE_ORION;
    if (has(t, "GPT4 Correct ")) return NM_CHAT_TEMPLATE_OPENCHAT;
    if (has(t, "USER: ") && has(t, "ASSISTANT: "))
        return has(t, "SYSTEM: ") ? NM_CHAT_TEMPLATE_VICUNA_ORCA : NM_CHAT_TEMPLATE_VICUNA;
    if (has(t, "### Instruction:") && has(t, "<|EOT|>")) return NM_CHAT_TEMPLATE_DEEPSEEK;
    if (has(t, "<|START_OF_TURN_TOKEN|>") && has(t, "<|USER_TOKEN|>")) return NM_CHAT_TEMPLATE_COMMAND_R;
    if (has(t, "<|start_header_id|>") && has(t, "<|end_header_id|>")) return NM_CHAT_TEMPLATE_LLAMA3;
    if (has(t, "[gMASK]sop")) return NM_CHAT_TEMPLATE_CHATGLM3;
    if (has(t, "<用户>")) return NM_CHAT_TEMPLATE_MINICPM;
    if (has(t, "'Assistant: ' + message['content'] + eos_token")) return NM_CHAT_TEMPLATE_DEEPSEEK2;
    if (has(t, "<｜Assistant｜>") && has(t, "<｜User｜>") && has(t, "<｜end▁of▁sentence｜>"))
        return NM_CHAT_TEMPLATE_DEEPSEEK3;
    if (has(t, "[|system|]") && has(t, "[|assistant|]") && has(t, "[|endofturn|]"))
        return has(t, "[|tool|]") ? NM_CHAT_TEMPLATE_UNKNOWN /* EXAONE 4 */ : NM_CHAT_TEMPLATE_EXAONE3;
    if (has(t, "rwkv-world") || has(t, "{{- 'User: ' + message['content']|trim + '\\n\\n' -}}"))
        return NM_CHAT_TEMPLATE_UNKNOWN; /* RWKV world */
    if (has(t, "<|start_of_role|>")) return NM_CHAT_TEMPLATE_GRANITE;
    if (has(t, "message['role'] + additional_special_tokens[0] + message['content'] + additional_special_tokens[1]"))
        return NM_CHAT_TEMPLATE_UNKNOWN; /* GigaChat */
    if (has(t, "<|role_start|>")) return NM_CHAT_TEMPLATE_MEGREZ;
    if (has(t, " Ассистент:")) return NM_CHAT_TEMPLATE_UNKNOWN; /* Yandex */
    if (has(t, "<role>ASSISTANT</role>") && has(t, "'HUMAN'")) return NM_CHAT_TEMPLATE_BAILING;
    if (has(t, "<|header_start|>") && has(t, "<|header_end|>")) return NM_CHAT_TEMPLATE_LLAMA4;
    return NM_CHAT_TEMPLATE_UNKNOWN;
}

nm_chat_template nm_chat_template_of_gguf(const nm_gguf *g) {
    int64_t k = nm_gguf_find_key(g, "tokenizer.chat_template");
    if (k < 0) return NM_CHAT_TEMPLATE_DEFAULT;
    nm_str s;
    if (nm_gguf_get_str(g, "tokenizer.chat_template", &s, NULL) != NM_OK) return NM_CHAT_TEMPLATE_UNKNOWN;
    char *z = nm_strndup(s.ptr, (size_t)s.len);
    if (!z) return NM_CHAT_TEMPLATE_UNKNOWN;
    nm_chat_template t = nm_chat_template_detect(z);
    free(z);
    if (t == NM_CHAT_TEMPLATE_TINYLLAMA) {
        uint32_t eos;
        int64_t tk = nm_gguf_find_key(g, "tokenizer.ggml.tokens");
        if (tk >= 0 && nm_gguf_get_u32(g, "tokenizer.ggml.eos_token_id", &eos, NULL) == NM_OK &&
            nm_gguf_arr_type(g, tk) == NM_GGUF_STRING && eos < nm_gguf_arr_n(g, tk)) {
            nm_str e = nm_gguf_arr_str(g, tk, eos);
            if (e.len == 13 && memcmp(e.ptr, "<|endoftext|>", 13) == 0) t = NM_CHAT_TEMPLATE_ZEPHYR;
        }
    }
    return t;
}

/* ---- rendering ---- */

static void put(nm_buf *b, const char *s) { nm_buf_push(b, s, strlen(s)); }

/* Python's str.strip() for ASCII whitespace, as llama.cpp's trim(). */
static void put_trimmed(nm_buf *b, const char *s) {
    size_t n = strlen(s), i = 0;
    while (i < n && isspace((unsigned char)s[i])) i++;
    while (n > i && isspace((unsigned char)s[n - 1])) n--;
    nm_buf_push(b, s + i, n - i);
}

static bool is(const char *role, const char *r) { return strcmp(role, r) == 0; }

static void render_mistral_old(nm_buf *b, nm_chat_template t, const nm_chat_msg *m, size_t n) {
    const char *lead = t == NM_CHAT_TEMPLATE_MISTRAL_V1 ? " " : "";
    const char *trail = t == NM_CHAT_TEMPLATE_MISTRAL_V3_TEKKEN ? "" : " ";
    bool trim_assistant = t == NM_CHAT_TEMPLATE_MISTRAL_V3;
    bool in_turn = false;
    for (size_t i = 0; i < n; i++) {
        if (!in_turn) {
            put(b, lead);
            put(b, "[INST]");
            put(b, trail);
            in_turn = true;
        }
        if (is(m[i].role, "system")) {
            put(b, m[i].content);
            put(b, "\n\n");
        } else if (is(m[i].role, "user")) {
            put(b, m[i].content);
            put(b, lead);
            put(b, "[/INST]");
        } else {
            put(b, trail);
            if (trim_assistant) put_trimmed(b, m[i].content);
            else put(b, m[i].content);
            put(b, "</s>");
            in_turn = false;
        }
    }
}

static void render_llama2(nm_buf *b, nm_chat_template t, const nm_chat_msg *m, size_t n) {
    bool sys = t != NM_CHAT_TEMPLATE_LLAMA2;
    bool bos_inside = t == NM_CHAT_TEMPLATE_LLAMA2_SYS_BOS;
    bool strip = t == NM_CHAT_TEMPLATE_LLAMA2_SYS_STRIP;
    bool in_turn = true; /* the first turn opens here; its BOS comes from the tokenizer */
    put(b, "[INST] ");
    for (size_t i = 0; i < n; i++) {
        if (!in_turn) {
            in_turn = true;
            put(b, bos_inside ? "<s>[INST] " : "[INST] ");
        }
        void (*content)(nm_buf *, const char *) = strip ? put_trimmed : put;
        if (is(m[i].role, "system")) {
            if (sys) {
                put(b, "<<SYS>>\n");
                content(b, m[i].content);
                put(b, "\n<</SYS>>\n\n");
            } else {
                /* no system slot: it goes, unmarked, into the first turn */
                content(b, m[i].content);
                put(b, "\n");
            }
        } else if (is(m[i].role, "user")) {
            content(b, m[i].content);
            put(b, " [/INST]");
        } else {
            content(b, m[i].content);
            put(b, "</s>");
            in_turn = false;
        }
    }
}

static void render_gemma(nm_buf *b, const nm_chat_msg *m, size_t n, bool add_ass) {
    /* Gemma has no system role: the (trimmed) system text opens the next
     * user turn. */
    nm_buf sys;
    nm_buf_init(&sys);
    for (size_t i = 0; i < n; i++) {
        if (is(m[i].role, "system")) {
            put_trimmed(&sys, m[i].content);
            continue;
        }
        const char *role = is(m[i].role, "assistant") ? "model" : m[i].role;
        put(b, "<start_of_turn>");
        put(b, role);
        put(b, "\n");
        if (sys.len && !is(role, "model")) {
            nm_buf_push(b, sys.data, sys.len);
            put(b, "\n\n");
            sys.len = 0;
        }
        put_trimmed(b, m[i].content);
        put(b, "<end_of_turn>\n");
    }
    if (sys.oom) b->oom = true;
    nm_buf_deinit(&sys);
    if (add_ass) put(b, "<start_of_turn>model\n");
}

static void render_orion(nm_buf *b, const nm_chat_msg *m, size_t n) {
    nm_buf sys;
    nm_buf_init(&sys);
    for (size_t i = 0; i < n; i++) {
        if (is(m[i].role, "system")) {
            put(&sys, m[i].content);
        } else if (is(m[i].role, "user")) {
            put(b, "Human: ");
            if (sys.len) {
                nm_buf_push(b, sys.data, sys.len);
                put(b, "\n\n");
                sys.len = 0;
            }
            put(b, m[i].content);
            put(b, "\n\nAssistant: </s>");
        } else {
            put(b, m[i].content);
            put(b, "</s>");
        }
    }
    if (sys.oom) b->oom = true;
    nm_buf_deinit(&sys);
}

/* "<|ROLE|>\nCONTENT" + end, the shape shared by phi-3, zephyr, falcon-3 */
static void render_role_bars(nm_buf *b, const nm_chat_msg *m, size_t n, const char *end) {
    for (size_t i = 0; i < n; i++) {
        put(b, "<|");
        put(b, m[i].role);
        put(b, "|>\n");
        put(b, m[i].content);
        put(b, end);
    }
}

static void render(nm_buf *b, nm_chat_template t, const nm_chat_msg *m, size_t n, bool add_ass) {
    switch (t) {
    case NM_CHAT_TEMPLATE_CHATML:
        for (size_t i = 0; i < n; i++) {
            put(b, "<|im_start|>");
            put(b, m[i].role);
            put(b, "\n");
            put(b, m[i].content);
            put(b, "<|im_end|>\n");
        }
        if (add_ass) put(b, "<|im_start|>assistant\n");
        break;
    case NM_CHAT_TEMPLATE_MISTRAL_V7:
    case NM_CHAT_TEMPLATE_MISTRAL_V7_TEKKEN: {
        const char *sp = t == NM_CHAT_TEMPLATE_MISTRAL_V7 ? " " : "";
        for (size_t i = 0; i < n; i++) {
            if (is(m[i].role, "system")) {
                put(b, "[SYSTEM_PROMPT]");
                put(b, sp);
                put(b, m[i].content);
                put(b, "[/SYSTEM_PROMPT]");
            } else if (is(m[i].role, "user")) {
                put(b, "[INST]");
                put(b, sp);
                put(b, m[i].content);
                put(b, "[/INST]");
            } else {
                put(b, sp);
                put(b, m[i].content);
                put(b, "</s>");
            }
        }
        break;
    }
    case NM_CHAT_TEMPLATE_MISTRAL_V1:
    case NM_CHAT_TEMPLATE_MISTRAL_V3:
    case NM_CHAT_TEMPLATE_MISTRAL_V3_TEKKEN:
        render_mistral_old(b, t, m, n);
        break;
    case NM_CHAT_TEMPLATE_LLAMA2:
    case NM_CHAT_TEMPLATE_LLAMA2_SYS:
    case NM_CHAT_TEMPLATE_LLAMA2_SYS_BOS:
    case NM_CHAT_TEMPLATE_LLAMA2_SYS_STRIP:
        render_llama2(b, t, m, n);
        break;
    case NM_CHAT_TEMPLATE_PHI3:
        render_role_bars(b, m, n, "<|end|>\n");
        if (add_ass) put(b, "<|assistant|>\n");
        break;
    case NM_CHAT_TEMPLATE_PHI4:
        for (size_t i = 0; i < n; i++) {
            put(b, "<|im_start|>");
            put(b, m[i].role);
            put(b, "<|im_sep|>");
            put(b, m[i].content);
            put(b, "<|im_end|>");
        }
        if (add_ass) put(b, "<|im_start|>assistant<|im_sep|>");
        break;
    case NM_CHAT_TEMPLATE_FALCON3:
        render_role_bars(b, m, n, "\n");
        if (add_ass) put(b, "<|assistant|>\n");
        break;
    case NM_CHAT_TEMPLATE_ZEPHYR:
        render_role_bars(b, m, n, "<|endoftext|>\n");
        if (add_ass) put(b, "<|assistant|>\n");
        break;
    case NM_CHAT_TEMPLATE_TINYLLAMA:
        render_role_bars(b, m, n, "</s>\n");
        if (add_ass) put(b, "<|assistant|>\n");
        break;
    case NM_CHAT_TEMPLATE_MONARCH:
        for (size_t i = 0; i < n; i++) {
            if (i > 0) put(b, "<s>"); /* the first BOS comes from the tokenizer */
            put(b, m[i].role);
            put(b, "\n");
            put(b, m[i].content);
            put(b, "</s>\n");
        }
        if (add_ass) put(b, "<s>assistant\n");
        break;
    case NM_CHAT_TEMPLATE_GEMMA:
        render_gemma(b, m, n, add_ass);
        break;
    case NM_CHAT_TEMPLATE_ORION:
        render_orion(b, m, n);
        break;
    case NM_CHAT_TEMPLATE_OPENCHAT:
        for (size_t i = 0; i < n; i++) {
            if (is(m[i].role, "system")) {
                put(b, m[i].content);
            } else {
                put(b, "GPT4 Correct ");
                char c = (char)toupper((unsigned char)m[i].role[0]);
                if (c) {
                    nm_buf_push(b, &c, 1);
                    put(b, m[i].role + 1);
                }
                put(b, ": ");
                put(b, m[i].content);
            }
            put(b, "<|end_of_turn|>");
        }
        if (add_ass) put(b, "GPT4 Correct Assistant:");
        break;
    case NM_CHAT_TEMPLATE_VICUNA:
    case NM_CHAT_TEMPLATE_VICUNA_ORCA:
        for (size_t i = 0; i < n; i++) {
            if (is(m[i].role, "system")) {
                if (t == NM_CHAT_TEMPLATE_VICUNA_ORCA) {
                    put(b, "SYSTEM: ");
                    put(b, m[i].content);
                    put(b, "\n");
                } else {
                    put(b, m[i].content);
                    put(b, "\n\n");
                }
            } else if (is(m[i].role, "user")) {
                put(b, "USER: ");
                put(b, m[i].content);
                put(b, "\n");
            } else if (is(m[i].role, "assistant")) {
                put(b, "ASSISTANT: ");
                put(b, m[i].content);
                put(b, "</s>\n");
            }
        }
        if (add_ass) put(b, "ASSISTANT:");
        break;
    case NM_CHAT_TEMPLATE_DEEPSEEK:
        for (size_t i = 0; i < n; i++) {
            if (is(m[i].role, "system")) {
                put(b, m[i].content);
            } else if (is(m[i].role, "user")) {
                put(b, "### Instruction:\n");
                put(b, m[i].content);
                put(b, "\n");
            } else if (is(m[i].role, "assistant")) {
                put(b, "### Response:\n");
                put(b, m[i].content);
                put(b, "\n<|EOT|>\n");
            }
        }
        if (add_ass) put(b, "### Response:\n");
        break;
    case NM_CHAT_TEMPLATE_DEEPSEEK2:
        for (size_t i = 0; i < n; i++) {
            if (is(m[i].role, "system")) {
                put(b, m[i].content);
                put(b, "\n\n");
            } else if (is(m[i].role, "user")) {
                put(b, "User: ");
                put(b, m[i].content);
                put(b, "\n\n");
            } else if (is(m[i].role, "assistant")) {
                put(b, "Assistant: ");
                put(b, m[i].content);
                put(b, "<｜end▁of▁sentence｜>");
            }
        }
        if (add_ass) put(b, "Assistant:");
        break;
    case NM_CHAT_TEMPLATE_DEEPSEEK3:
        for (size_t i = 0; i < n; i++) {
            if (is(m[i].role, "system")) {
                put(b, m[i].content);
                put(b, "\n\n");
            } else if (is(m[i].role, "user")) {
                put(b, "<｜User｜>");
                put(b, m[i].content);
            } else if (is(m[i].role, "assistant")) {
                put(b, "<｜Assistant｜>");
                put(b, m[i].content);
                put(b, "<｜end▁of▁sentence｜>");
            }
        }
        if (add_ass) put(b, "<｜Assistant｜>");
        break;
    case NM_CHAT_TEMPLATE_COMMAND_R:
        for (size_t i = 0; i < n; i++) {
            const char *tag = is(m[i].role, "system")      ? "<|SYSTEM_TOKEN|>"
                              : is(m[i].role, "user")      ? "<|USER_TOKEN|>"
                              : is(m[i].role, "assistant") ? "<|CHATBOT_TOKEN|>"
                                                           : NULL;
            if (!tag) continue;
            put(b, "<|START_OF_TURN_TOKEN|>");
            put(b, tag);
            put_trimmed(b, m[i].content);
            put(b, "<|END_OF_TURN_TOKEN|>");
        }
        if (add_ass) put(b, "<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>");
        break;
    case NM_CHAT_TEMPLATE_LLAMA3:
        for (size_t i = 0; i < n; i++) {
            put(b, "<|start_header_id|>");
            put(b, m[i].role);
            put(b, "<|end_header_id|>\n\n");
            put_trimmed(b, m[i].content);
            put(b, "<|eot_id|>");
        }
        if (add_ass) put(b, "<|start_header_id|>assistant<|end_header_id|>\n\n");
        break;
    case NM_CHAT_TEMPLATE_LLAMA4:
        for (size_t i = 0; i < n; i++) {
            put(b, "<|header_start|>");
            put(b, m[i].role);
            put(b, "<|header_end|>\n\n");
            put_trimmed(b, m[i].content);
            put(b, "<|eot|>");
        }
        if (add_ass) put(b, "<|header_start|>assistant<|header_end|>\n\n");
        break;
    case NM_CHAT_TEMPLATE_CHATGLM3:
        put(b, "[gMASK]sop");
        for (size_t i = 0; i < n; i++) {
            put(b, "<|");
            put(b, m[i].role);
            put(b, "|>\n ");
            put(b, m[i].content);
        }
        if (add_ass) put(b, "<|assistant|>");
        break;
    case NM_CHAT_TEMPLATE_CHATGLM4:
    case NM_CHAT_TEMPLATE_GLMEDGE:
        if (t == NM_CHAT_TEMPLATE_CHATGLM4) put(b, "[gMASK]<sop>");
        for (size_t i = 0; i < n; i++) {
            put(b, "<|");
            put(b, m[i].role);
            put(b, "|>\n");
            put(b, m[i].content);
        }
        if (add_ass) put(b, t == NM_CHAT_TEMPLATE_CHATGLM4 ? "<|assistant|>\n" : "<|assistant|>");
        break;
    case NM_CHAT_TEMPLATE_MINICPM:
        for (size_t i = 0; i < n; i++) {
            if (is(m[i].role, "user")) {
                put(b, "<用户>");
                put_trimmed(b, m[i].content);
                put(b, "<AI>");
            } else {
                put_trimmed(b, m[i].content);
            }
        }
        break;
    case NM_CHAT_TEMPLATE_EXAONE3:
        for (size_t i = 0; i < n; i++) {
            if (is(m[i].role, "system")) {
                put(b, "[|system|]");
                put_trimmed(b, m[i].content);
                put(b, "[|endofturn|]\n");
            } else if (is(m[i].role, "user")) {
                put(b, "[|user|]");
                put_trimmed(b, m[i].content);
                put(b, "\n");
            } else if (is(m[i].role, "assistant")) {
                put(b, "[|assistant|]");
                put_trimmed(b, m[i].content);
                put(b, "[|endofturn|]\n");
            }
        }
        if (add_ass) put(b, "[|assistant|]");
        break;
    case NM_CHAT_TEMPLATE_GRANITE:
        for (size_t i = 0; i < n; i++) {
            put(b, "<|start_of_role|>");
            put(b, m[i].role);
            put(b, "<|end_of_role|>");
            if (is(m[i].role, "assistant_tool_call")) put(b, "<|tool_call|>");
            put(b, m[i].content);
            put(b, "<|end_of_text|>\n");
        }
        if (add_ass) put(b, "<|start_of_role|>assistant<|end_of_role|>");
        break;
    case NM_CHAT_TEMPLATE_MEGREZ:
        for (size_t i = 0; i < n; i++) {
            put(b, "<|role_start|>");
            put(b, m[i].role);
            put(b, "<|role_end|>");
            put(b, m[i].content);
            put(b, "<|turn_end|>");
        }
        if (add_ass) put(b, "<|role_start|>assistant<|role_end|>");
        break;
    case NM_CHAT_TEMPLATE_BAILING:
        for (size_t i = 0; i < n; i++) {
            put(b, "<role>");
            if (is(m[i].role, "user")) {
                put(b, "HUMAN");
            } else {
                for (const char *r = m[i].role; *r; r++) {
                    char c = (char)toupper((unsigned char)*r);
                    nm_buf_push(b, &c, 1);
                }
            }
            put(b, "</role>");
            put(b, m[i].content);
        }
        if (add_ass) put(b, "<role>ASSISTANT</role>");
        break;
    case NM_CHAT_TEMPLATE_UNKNOWN:
    case NM_CHAT_TEMPLATE_COUNT:
        break;
    }
}

nm_status nm_chat_render(nm_chat_template tmpl, const nm_chat_msg *msgs, size_t n, bool add_assistant_prefix,
                         char **out, nm_err *err) {
    *out = NULL;
    if (!nm_chat_template_name(tmpl))
        return nm_err_set(err, NM_ERR_ARG, "chat template: unknown template id %d", (int)tmpl);
    if (n && !msgs) return nm_err_set(err, NM_ERR_ARG, "chat template: message list is NULL");
    for (size_t i = 0; i < n; i++)
        if (!msgs[i].role || !msgs[i].content)
            return nm_err_set(err, NM_ERR_ARG, "chat template: message %zu has no %s", i,
                              msgs[i].role ? "content" : "role");
    nm_buf b;
    nm_buf_init(&b);
    render(&b, tmpl, msgs, n, add_assistant_prefix);
    nm_buf_push(&b, "", 1); /* NUL */
    if (b.oom) {
        nm_buf_deinit(&b);
        return nm_err_set(err, NM_ERR_NOMEM, "chat template: out of memory rendering %zu messages", n);
    }
    *out = (char *)b.data;
    return NM_OK;
}
