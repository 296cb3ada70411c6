/* chat.c - chat template families: detection by marker strings and rendering in C.
 *
 * We do not interpret Jinja. Each family is rendered as its reference template renders
 * it for plain string contents (no trimming, no tool calls); docs/chat-templates.md
 * lists the exact output of each. Families without a system role (llama2, mistral,
 * gemma) fold a system message into the next user message as their templates do. The
 * rendered text is built in a growable buffer capped at MAX_CHAT_BYTES. Not done here:
 * arbitrary Jinja templates (they fall back to the generic format with a warning). */
#include "model/chat.h"

#include "base/log.h"
#include "base/mem.h"

#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

enum { MAX_CHAT_BYTES = 64 << 20, MAX_SPECIAL_PIECE = 256 };

static const char *const family_names[] = {"generic", "chatml", "llama2", "llama3",
                                           "mistral", "zephyr", "gemma",  "phi3"};

const char *mc_chat_family_name(enum mc_chat_family f) {
    if ((unsigned)f >= sizeof(family_names) / sizeof(family_names[0]))
        return "generic";
    return family_names[f];
}

int mc_chat_family_from_name(const char *name, enum mc_chat_family *out) {
    for (size_t i = 0; i < sizeof(family_names) / sizeof(family_names[0]); i++) {
        if (strcmp(name, family_names[i]) == 0) {
            *out = (enum mc_chat_family)i;
            return MC_OK;
        }
    }
    return MC_EINVAL;
}

enum mc_chat_family mc_chat_detect(const char *t) {
    if (!t)
        return MC_CHAT_GENERIC;
    if (strstr(t, "<|im_start|>"))
        return MC_CHAT_CHATML;
    if (strstr(t, "<|start_header_id|>") && strstr(t, "<|end_header_id|>"))
        return MC_CHAT_LLAMA3;
    if (strstr(t, "[INST]"))
        return strstr(t, "<<SYS>>") ? MC_CHAT_LLAMA2 : MC_CHAT_MISTRAL;
    if (strstr(t, "<start_of_turn>"))
        return MC_CHAT_GEMMA;
    /* phi3 and zephyr share <|user|>; phi3 closes turns with <|end|>, zephyr with EOS. */
    if (strstr(t, "<|user|>"))
        return strstr(t, "<|end|>") ? MC_CHAT_PHI3 : MC_CHAT_ZEPHYR;
    return MC_CHAT_GENERIC;
}

/* ---- Output buffer ------------------------------------------------------------- */

struct buf {
    char *p;
    size_t len;
    size_t cap;
    bool failed;
};

static void put(struct buf *b, const char *s) {
    size_t n = s ? strlen(s) : 0;
    if (b->failed || n == 0)
        return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *p = cap <= MAX_CHAT_BYTES ? mc_realloc(b->p, cap) : NULL;
        if (!p) {
            b->failed = true;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

/* ---- Families ------------------------------------------------------------------ */

enum role { ROLE_SYSTEM, ROLE_USER, ROLE_ASSISTANT };

static int parse_role(const struct mc_chat_msg *m, size_t i, enum role *out, struct mc_err *err) {
    if (!m->role || !m->content)
        return mc_err_set(err, MC_EINVAL, "message %zu has no role or no content", i);
    if (strcmp(m->role, "system") == 0)
        *out = ROLE_SYSTEM;
    else if (strcmp(m->role, "user") == 0)
        *out = ROLE_USER;
    else if (strcmp(m->role, "assistant") == 0)
        *out = ROLE_ASSISTANT;
    else
        return mc_err_set(err, MC_EINVAL,
                          "message %zu has role '%.32s' (expected system, user or assistant)", i,
                          m->role);
    return MC_OK;
}

/* Markers of the families whose every turn has the shape prefix(role) content suffix. */
struct turn_style {
    const char *open[3]; /* per role: system, user, assistant */
    const char *close[3];
    const char *gen; /* asks for the assistant's turn */
};

static void render_turns(struct buf *b, const struct turn_style *st, const enum role *roles,
                         const struct mc_chat_msg *msgs, size_t n, bool add_assistant) {
    for (size_t i = 0; i < n; i++) {
        put(b, st->open[roles[i]]);
        put(b, msgs[i].content);
        put(b, st->close[roles[i]]);
    }
    if (add_assistant)
        put(b, st->gen);
}

/* llama2, mistral and gemma: no system role; a system message is folded into the next
 * user message (llama2 inside <<SYS>> markers, the others followed by a blank line). */
static void render_inst(struct buf *b, enum mc_chat_family f, const enum role *roles,
                        const struct mc_chat_msg *msgs, size_t n, bool add_assistant,
                        const char *bos, const char *eos) {
    const char *sys = NULL;
    bool first = true;
    put(b, bos);
    for (size_t i = 0; i < n; i++) {
        const char *c = msgs[i].content;
        if (roles[i] == ROLE_SYSTEM) {
            sys = c;
            continue;
        }
        if (roles[i] == ROLE_USER) {
            if (f == MC_CHAT_LLAMA2 && !first)
                put(b, bos);
            put(b, f == MC_CHAT_GEMMA ? "<start_of_turn>user\n" : "[INST] ");
            if (sys && f == MC_CHAT_LLAMA2) {
                put(b, "<<SYS>>\n");
                put(b, sys);
                put(b, "\n<</SYS>>\n\n");
            } else if (sys) {
                put(b, sys);
                put(b, "\n\n");
            }
            sys = NULL;
            put(b, c);
            put(b, f == MC_CHAT_GEMMA ? "<end_of_turn>\n" : " [/INST]");
        } else if (f == MC_CHAT_GEMMA) {
            put(b, "<start_of_turn>model\n");
            put(b, c);
            put(b, "<end_of_turn>\n");
        } else {
            put(b, f == MC_CHAT_LLAMA2 ? " " : "");
            put(b, c);
            put(b, f == MC_CHAT_LLAMA2 ? " " : "");
            put(b, eos);
        }
        first = false;
    }
    if (add_assistant && f == MC_CHAT_GEMMA)
        put(b, "<start_of_turn>model\n");
}

static void render_family(struct buf *b, enum mc_chat_family f, const enum role *roles,
                          const struct mc_chat_msg *msgs, size_t n, bool add_assistant,
                          const char *bos, const char *eos) {
    char eos_nl[MAX_SPECIAL_PIECE + 2];
    snprintf(eos_nl, sizeof(eos_nl), "%s\n", eos);
    struct turn_style st;
    memset(&st, 0, sizeof(st));
    switch (f) {
    case MC_CHAT_LLAMA2:
    case MC_CHAT_MISTRAL:
    case MC_CHAT_GEMMA:
        render_inst(b, f, roles, msgs, n, add_assistant, bos, eos);
        return;
    case MC_CHAT_CHATML:
        st = (struct turn_style){
            {"<|im_start|>system\n", "<|im_start|>user\n", "<|im_start|>assistant\n"},
            {"<|im_end|>\n", "<|im_end|>\n", "<|im_end|>\n"},
            "<|im_start|>assistant\n"};
        break;
    case MC_CHAT_LLAMA3:
        put(b, bos);
        st = (struct turn_style){{"<|start_header_id|>system<|end_header_id|>\n\n",
                                  "<|start_header_id|>user<|end_header_id|>\n\n",
                                  "<|start_header_id|>assistant<|end_header_id|>\n\n"},
                                 {"<|eot_id|>", "<|eot_id|>", "<|eot_id|>"},
                                 "<|start_header_id|>assistant<|end_header_id|>\n\n"};
        break;
    case MC_CHAT_ZEPHYR:
        st = (struct turn_style){{"<|system|>\n", "<|user|>\n", "<|assistant|>\n"},
                                 {eos_nl, eos_nl, eos_nl},
                                 "<|assistant|>\n"};
        break;
    case MC_CHAT_PHI3:
        st = (struct turn_style){{"<|system|>\n", "<|user|>\n", "<|assistant|>\n"},
                                 {"<|end|>\n", "<|end|>\n", "<|end|>\n"},
                                 "<|assistant|>\n"};
        break;
    case MC_CHAT_GENERIC:
    default:
        st = (struct turn_style){
            {"System: ", "User: ", "Assistant: "}, {"\n\n", "\n\n", "\n\n"}, "Assistant:"};
        break;
    }
    render_turns(b, &st, roles, msgs, n, add_assistant);
}

int mc_chat_render(enum mc_chat_family f, const struct mc_chat_msg *msgs, size_t n_msgs,
                   bool add_assistant, const char *bos, const char *eos, char **out,
                   size_t *out_len, struct mc_err *err) {
    *out = NULL;
    if (out_len)
        *out_len = 0;
    if (n_msgs > (1u << 20))
        return mc_err_set(err, MC_EINVAL, "%zu messages exceed the limit of %u", n_msgs, 1u << 20);
    if ((bos && strlen(bos) > MAX_SPECIAL_PIECE) || (eos && strlen(eos) > MAX_SPECIAL_PIECE))
        return mc_err_set(err, MC_EINVAL, "bos/eos text longer than %d bytes", MAX_SPECIAL_PIECE);
    enum role *roles = mc_malloc((n_msgs ? n_msgs : 1) * sizeof(*roles));
    if (!roles)
        return mc_err_set(err, MC_ENOMEM, "chat render: allocation failed");
    for (size_t i = 0; i < n_msgs; i++) {
        int rc = parse_role(&msgs[i], i, &roles[i], err);
        if (rc != MC_OK) {
            mc_free(roles);
            return rc;
        }
    }

    struct buf b = {0};
    put(&b, " "); /* makes the empty rendering a valid string; removed below */
    b.len = 0;
    render_family(&b, f, roles, msgs, n_msgs, add_assistant, bos ? bos : "", eos ? eos : "");
    mc_free(roles);
    if (b.failed) {
        mc_free(b.p);
        return mc_err_set(err, MC_ENOMEM, "chat render: text exceeds %d bytes or allocation failed",
                          MAX_CHAT_BYTES);
    }
    b.p[b.len] = '\0';
    *out = b.p;
    if (out_len)
        *out_len = b.len;
    return MC_OK;
}

/* ---- Tokenizing ---------------------------------------------------------------- */

static atomic_int warned_generic;

/* The text of a special token into buf ("" if the id is -1 or does not fit). */
static void special_text(const struct mc_tokenizer *tok, int32_t id, char *buf, size_t size) {
    buf[0] = '\0';
    if (id < 0)
        return;
    int n = mc_token_to_piece(tok, id, true, buf, size - 1);
    buf[n > 0 && (size_t)n < size ? n : 0] = '\0';
}

int mc_chat_tokenize(const struct mc_tokenizer *tok, const char *tmpl,
                     const struct mc_chat_msg *msgs, size_t n_msgs, bool add_assistant,
                     int32_t **ids, size_t *n_ids, struct mc_err *err) {
    *ids = NULL;
    *n_ids = 0;
    enum mc_chat_family f = mc_chat_detect(tmpl);
    if (f == MC_CHAT_GENERIC && atomic_exchange(&warned_generic, 1) == 0)
        MC_LOG_WARN("chat", "template_fallback", "family=generic reason=%s",
                    tmpl ? "unrecognised_template" : "no_template");

    char bos[MAX_SPECIAL_PIECE + 1], eos[MAX_SPECIAL_PIECE + 1];
    int32_t bos_id = mc_tokenizer_bos(tok);
    special_text(tok, bos_id, bos, sizeof(bos));
    special_text(tok, mc_tokenizer_eos(tok), eos, sizeof(eos));

    char *text;
    size_t len;
    int rc = mc_chat_render(f, msgs, n_msgs, add_assistant, bos, eos, &text, &len, err);
    if (rc != MC_OK)
        return rc;
    bool has_bos = bos[0] && strncmp(text, bos, strlen(bos)) == 0;
    bool want_bos = bos_id >= 0 && mc_tokenizer_add_bos(tok) && !has_bos;

    int32_t *t;
    size_t n;
    rc = mc_tokenize(tok, text, len, false, true, &t, &n, err);
    mc_free(text);
    if (rc != MC_OK)
        return rc;
    if (want_bos) {
        int32_t *t2 = mc_realloc(t, (n + 1) * sizeof(*t));
        if (!t2) {
            mc_free(t);
            return mc_err_set(err, MC_ENOMEM, "chat tokens: allocation failed");
        }
        t = t2;
        memmove(t + 1, t, n * sizeof(*t));
        t[0] = bos_id;
        n++;
    }
    *ids = t;
    *n_ids = n;
    return MC_OK;
}
