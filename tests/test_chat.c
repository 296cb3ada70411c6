/* test_chat.c - chat template families: detection from template snippets, the exact
 * rendering of one conversation per family, exactly one BOS after tokenization, and
 * the one-time warning of the generic fallback. */
#include "base/log.h"
#include "base/mem.h"
#include "model/chat.h"
#include "model/gguf.h"
#include "model/tokenizer.h"
#include "test_util.h"

#include <string.h>

static const struct mc_chat_msg convo[] = {
    {"system", "S"}, {"user", "Hi"}, {"assistant", "Hello"}, {"user", "Bye"}};

static void check_render(enum mc_chat_family f, const char *bos, const char *eos,
                         const char *want) {
    char *out;
    size_t len;
    struct mc_err err;
    assert_int_equal(mc_chat_render(f, convo, 4, true, bos, eos, &out, &len, &err), MC_OK);
    assert_string_equal(out, want);
    assert_int_equal(len, strlen(want));
    mc_free(out);
}

static void test_detect_families_from_template_snippets(void **state) {
    (void)state;
    struct {
        const char *tmpl;
        enum mc_chat_family f;
    } cases[] = {
        {"{% for m in messages %}{{'<|im_start|>' + m['role'] + '\\n'}}{% endfor %}",
         MC_CHAT_CHATML},
        {"{{ bos_token + '[INST] <<SYS>>\\n' + system + '\\n<</SYS>>\\n\\n' }}", MC_CHAT_LLAMA2},
        {"{{ bos_token }}{% for m in messages %}{{ '[INST] ' + m['content'] + ' [/INST]' }}",
         MC_CHAT_MISTRAL},
        {"{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' }}", MC_CHAT_LLAMA3},
        {"{% if m['role'] == 'user' %}{{ '<|user|>\\n' + m['content'] + eos_token }}",
         MC_CHAT_ZEPHYR},
        {"{{ '<start_of_turn>' + role + '\\n' + m['content'] | trim + '<end_of_turn>\\n' }}",
         MC_CHAT_GEMMA},
        {"{{'<|user|>' + '\\n' + m['content'] + '<|end|>' + '\\n' + '<|assistant|>'}}",
         MC_CHAT_PHI3},
        {"{{ messages[0]['content'] }}", MC_CHAT_GENERIC},
        {NULL, MC_CHAT_GENERIC},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        assert_int_equal(mc_chat_detect(cases[i].tmpl), cases[i].f);
    enum mc_chat_family f;
    assert_int_equal(mc_chat_family_from_name("phi3", &f), MC_OK);
    assert_int_equal(f, MC_CHAT_PHI3);
    assert_string_equal(mc_chat_family_name(MC_CHAT_LLAMA3), "llama3");
    assert_int_equal(mc_chat_family_from_name("jinja", &f), MC_EINVAL);
}

static void test_render_chatml(void **state) {
    (void)state;
    check_render(MC_CHAT_CHATML, "<s>", "</s>",
                 "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                 "<|im_start|>assistant\nHello<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n"
                 "<|im_start|>assistant\n");
}

static void test_render_llama2(void **state) {
    (void)state;
    check_render(MC_CHAT_LLAMA2, "<s>", "</s>",
                 "<s>[INST] <<SYS>>\nS\n<</SYS>>\n\nHi [/INST] Hello </s><s>[INST] Bye [/INST]");
}

static void test_render_llama3(void **state) {
    (void)state;
    check_render(MC_CHAT_LLAMA3, "<|begin_of_text|>", "<|end_of_text|>",
                 "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nS<|eot_id|>"
                 "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
                 "<|start_header_id|>assistant<|end_header_id|>\n\nHello<|eot_id|>"
                 "<|start_header_id|>user<|end_header_id|>\n\nBye<|eot_id|>"
                 "<|start_header_id|>assistant<|end_header_id|>\n\n");
}

static void test_render_mistral(void **state) {
    (void)state;
    check_render(MC_CHAT_MISTRAL, "<s>", "</s>",
                 "<s>[INST] S\n\nHi [/INST]Hello</s>[INST] Bye [/INST]");
}

static void test_render_zephyr(void **state) {
    (void)state;
    check_render(
        MC_CHAT_ZEPHYR, "<s>", "</s>",
        "<|system|>\nS</s>\n<|user|>\nHi</s>\n<|assistant|>\nHello</s>\n<|user|>\nBye</s>\n"
        "<|assistant|>\n");
}

static void test_render_gemma(void **state) {
    (void)state;
    check_render(MC_CHAT_GEMMA, "<bos>", "<eos>",
                 "<bos><start_of_turn>user\nS\n\nHi<end_of_turn>\n<start_of_turn>model\nHello"
                 "<end_of_turn>\n<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n");
}

static void test_render_phi3(void **state) {
    (void)state;
    check_render(MC_CHAT_PHI3, "<s>", "<|endoftext|>",
                 "<|system|>\nS<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\nHello<|end|>\n"
                 "<|user|>\nBye<|end|>\n<|assistant|>\n");
}

static void test_render_generic(void **state) {
    (void)state;
    check_render(MC_CHAT_GENERIC, "<s>", "</s>",
                 "System: S\n\nUser: Hi\n\nAssistant: Hello\n\nUser: Bye\n\nAssistant:");
}

static void test_render_rejects_unknown_role(void **state) {
    (void)state;
    struct mc_chat_msg bad[] = {{"user", "a"}, {"tool", "b"}};
    char *out;
    struct mc_err err;
    assert_int_equal(mc_chat_render(MC_CHAT_CHATML, bad, 2, true, "", "", &out, NULL, &err),
                     MC_EINVAL);
    assert_non_null(strstr(err.msg, "message 1"));
    assert_non_null(strstr(err.msg, "tool"));
    assert_null(out);
}

/* ---- With a real vocabulary ---------------------------------------------------- */

static struct mc_gguf *vocab_gguf;
static struct mc_tokenizer *vocab;

static int load_vocab(void **state) {
    (void)state;
    char path[512];
    struct mc_err err;
    test_shared_path(path, sizeof(path), "models/llama-2-tiny-random.gguf");
    if (mc_gguf_open(path, &vocab_gguf, &err) != MC_OK ||
        mc_tokenizer_load(vocab_gguf, &vocab, &err) != MC_OK) {
        fprintf(stderr, "cannot load %s: %s\n", path, err.msg);
        return -1;
    }
    return 0;
}

static int free_vocab(void **state) {
    (void)state;
    mc_tokenizer_free(vocab);
    mc_gguf_close(vocab_gguf);
    return 0;
}

static int count_id(const int32_t *ids, size_t n, int32_t id) {
    int c = 0;
    for (size_t i = 0; i < n; i++)
        c += ids[i] == id;
    return c;
}

/* Every family, one user turn: the ids start with exactly one BOS and hold no other. */
static void test_tokenize_has_exactly_one_bos(void **state) {
    (void)state;
    static const char *const tmpls[] = {
        "<|im_start|>", "[INST] <<SYS>>",  "[INST]",         "<|start_header_id|><|end_header_id|>",
        "<|user|>",     "<start_of_turn>", "<|user|><|end|>"};
    struct mc_chat_msg msgs[] = {{"system", "Be brief."}, {"user", "Hello there"}};
    int32_t bos = mc_tokenizer_bos(vocab);
    assert_int_equal(bos, 1);
    for (size_t i = 0; i < sizeof(tmpls) / sizeof(tmpls[0]); i++) {
        int32_t *ids;
        size_t n;
        struct mc_err err;
        assert_int_equal(mc_chat_tokenize(vocab, tmpls[i], msgs, 2, true, &ids, &n, &err), MC_OK);
        assert_true(n > 3);
        assert_int_equal(ids[0], bos);
        if (count_id(ids, n, bos) != 1)
            fail_msg("template %s: %d BOS tokens", tmpls[i], count_id(ids, n, bos));
        mc_free(ids);
    }
}

/* llama2 renders "<s>" as text; it must become the BOS id, not characters. */
static void test_tokenize_llama2_bos_text_becomes_token(void **state) {
    (void)state;
    struct mc_chat_msg msgs[] = {{"user", "Hi"}};
    int32_t *ids;
    size_t n;
    struct mc_err err;
    assert_int_equal(mc_chat_tokenize(vocab, "[INST] <<SYS>>", msgs, 1, true, &ids, &n, &err),
                     MC_OK);
    int32_t *plain;
    size_t n_plain;
    const char *text = "[INST] Hi [/INST]";
    assert_int_equal(mc_tokenize(vocab, text, strlen(text), true, false, &plain, &n_plain, &err),
                     MC_OK);
    assert_int_equal(n, n_plain);
    assert_memory_equal(ids, plain, n * sizeof(*ids));
    mc_free(ids);
    mc_free(plain);
}

static int n_warnings;

static void count_warn(enum mc_log_level level, const char *line, void *user) {
    (void)user;
    if (level == MC_LOG_WARN && strstr(line, "template_fallback"))
        n_warnings++;
}

static void test_generic_fallback_warns_once(void **state) {
    (void)state;
    mc_log_set_fn(count_warn, NULL);
    struct mc_chat_msg msgs[] = {{"user", "Hi"}};
    for (int i = 0; i < 3; i++) {
        int32_t *ids;
        size_t n;
        struct mc_err err;
        assert_int_equal(
            mc_chat_tokenize(vocab, i ? "{{ unknown }}" : NULL, msgs, 1, true, &ids, &n, &err),
            MC_OK);
        assert_int_equal(count_id(ids, n, 1), 1);
        mc_free(ids);
    }
    mc_log_set_fn(NULL, NULL);
    assert_int_equal(n_warnings, 1);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_detect_families_from_template_snippets),
        cmocka_unit_test(test_render_chatml),
        cmocka_unit_test(test_render_llama2),
        cmocka_unit_test(test_render_llama3),
        cmocka_unit_test(test_render_mistral),
        cmocka_unit_test(test_render_zephyr),
        cmocka_unit_test(test_render_gemma),
        cmocka_unit_test(test_render_phi3),
        cmocka_unit_test(test_render_generic),
        cmocka_unit_test(test_render_rejects_unknown_role),
        cmocka_unit_test_setup_teardown(test_tokenize_has_exactly_one_bos, load_vocab, free_vocab),
        cmocka_unit_test_setup_teardown(test_tokenize_llama2_bos_text_becomes_token, load_vocab,
                                        free_vocab),
        cmocka_unit_test_setup_teardown(test_generic_fallback_warns_once, load_vocab, free_vocab),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
