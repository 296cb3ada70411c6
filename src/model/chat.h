/* chat.h - chat templates: recognising a model's template family and rendering a list
 * of messages into prompt text, then tokenizing it with exactly one leading BOS.
 *
 * GGUF files carry a Jinja template (tokenizer.chat_template); we do not run Jinja but
 * recognise the common families by marker strings and render them in C. An unknown or
 * missing template falls back to a documented generic format with one warning through
 * the log callback. docs/chat-templates.md gives every family's exact output. */
#ifndef MC_CHAT_H
#define MC_CHAT_H

#include "base/err.h"
#include "model/tokenizer.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum mc_chat_family {
    MC_CHAT_GENERIC = 0, /* fallback: "System: ...\n\nUser: ...\n\nAssistant:" */
    MC_CHAT_CHATML,      /* <|im_start|>role\n...<|im_end|> */
    MC_CHAT_LLAMA2,      /* <s>[INST] <<SYS>>\n...\n<</SYS>>\n\n... [/INST] */
    MC_CHAT_LLAMA3,      /* <|start_header_id|>role<|end_header_id|>\n\n...<|eot_id|> */
    MC_CHAT_MISTRAL,     /* <s>[INST] ... [/INST]...</s> (no <<SYS>>) */
    MC_CHAT_ZEPHYR,      /* <|user|>\n...</s>\n */
    MC_CHAT_GEMMA,       /* <start_of_turn>user\n...<end_of_turn>\n */
    MC_CHAT_PHI3,        /* <|user|>\n...<|end|>\n */
};

struct mc_chat_msg {
    const char *role;    /* "system", "user" or "assistant" */
    const char *content; /* UTF-8, NUL-terminated */
};

/* The family of a template text; MC_CHAT_GENERIC for NULL or unrecognised text. */
enum mc_chat_family mc_chat_detect(const char *tmpl);
/* "chatml", "llama2", ... "generic". */
const char *mc_chat_family_name(enum mc_chat_family f);
/* Parses a family name (as printed by mc_chat_family_name); MC_EINVAL if unknown. */
int mc_chat_family_from_name(const char *name, enum mc_chat_family *out);

/* Renders msgs into text (mc_malloc'd, NUL-terminated, freed by the caller with mc_free).
 * bos and eos are the texts of the vocabulary's BOS/EOS tokens ("<s>", "</s>", ...;
 * NULL or "" when it has none); families whose template writes BOS start the text with
 * it. add_assistant appends the header that asks the model for the next assistant turn.
 * MC_EINVAL names an unknown role or a missing content. */
int mc_chat_render(enum mc_chat_family f, const struct mc_chat_msg *msgs, size_t n_msgs,
                   bool add_assistant, const char *bos, const char *eos, char **out,
                   size_t *out_len, struct mc_err *err);

/* Renders with the family of tmpl (warning once, via MC_LOG_WARN, when it falls back to
 * the generic format) using tok's BOS/EOS texts, and tokenizes with special tokens
 * parsed. The result starts with exactly one BOS when the vocabulary uses one: added by
 * the tokenizer unless the rendered text already begins with it. *ids is mc_malloc'd. */
int mc_chat_tokenize(const struct mc_tokenizer *tok, const char *tmpl,
                     const struct mc_chat_msg *msgs, size_t n_msgs, bool add_assistant,
                     int32_t **ids, size_t *n_ids, struct mc_err *err);

#endif
