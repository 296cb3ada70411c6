/* test_http.c - the server's HTTP layer without a model: request validation (every
 * rejection with its status, param, code and message), the OpenAI error body, UTF-8
 * checks, SSE framing, metrics text, and a live libmicrohttpd listener on a free port
 * (body cap 413 before and while reading, request ids, JSON replies) driven with libcurl. */
#include "serve/serve_int.h"

#include "base/mem.h"
#include "test_util.h"

#include <curl/curl.h>
#include <string.h>

/* ---- Helpers ---------------------------------------------------------------------- */

static int parse_chat(const char *body, struct mc_api_gen *g, struct mc_api_error *e) {
    memset(e, 0, sizeof(*e));
    return mc_api_parse_chat(body, strlen(body), g, e);
}

/* Asserts body is rejected with this param and code, and that msg contains needle. */
static void expect_chat_error(const char *body, const char *param, const char *code,
                              const char *needle) {
    struct mc_api_gen g;
    struct mc_api_error e;
    int rc = parse_chat(body, &g, &e);
    if (rc != MC_EINVAL)
        fail_msg("accepted: %s", body);
    assert_int_equal(e.status, 400);
    assert_string_equal(e.param, param);
    assert_string_equal(e.code, code);
    if (!strstr(e.msg, needle))
        fail_msg("message '%s' lacks '%s' (body %s)", e.msg, needle, body);
    assert_null(g.msgs);
}

/* ---- Chat parsing ----------------------------------------------------------------- */

static void test_chat_parses_every_field(void **state) {
    (void)state;
    struct mc_api_gen g;
    struct mc_api_error e;
    const char *body =
        "{\"model\":\"m\",\"messages\":[{\"role\":\"system\",\"content\":\"be brief\"},"
        "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"he\"},"
        "{\"type\":\"text\",\"text\":\"llo\"}]},{\"role\":\"assistant\",\"content\":null},"
        "{\"role\":\"developer\",\"content\":\"late\"}],"
        "\"stream\":true,\"stream_options\":{\"include_usage\":true},\"max_tokens\":7,"
        "\"max_completion_tokens\":5,\"n\":3,\"stop\":[\"a\",\"bc\"],\"temperature\":0,"
        "\"top_p\":0.5,\"seed\":-3,\"logprobs\":true,\"top_logprobs\":2,"
        "\"conversation\":\"conv_0123456789abcdef\",\"user\":\"ignored\",\"unknown\":[1]}";
    assert_int_equal(parse_chat(body, &g, &e), MC_OK);
    assert_string_equal(g.model, "m");
    assert_int_equal(g.n_msgs, 4);
    assert_int_equal(g.msgs[0].role, MC_ROLE_SYSTEM);
    assert_string_equal(g.msgs[1].content, "hello");
    assert_int_equal(g.msgs[2].role, MC_ROLE_ASSISTANT);
    assert_string_equal(g.msgs[2].content, "");
    assert_int_equal(g.msgs[3].role, MC_ROLE_SYSTEM);
    assert_true(g.stream && g.include_usage && g.logprobs);
    assert_int_equal(g.max_tokens, 5); /* max_completion_tokens wins */
    assert_int_equal(g.n, 3);
    assert_int_equal(g.n_stop, 2);
    assert_string_equal(g.stop[1], "bc");
    assert_true(g.sampling.has_temperature);
    assert_float_near(g.sampling.temperature, 0.0, 0);
    assert_float_near(g.sampling.top_p, 0.5, 0);
    assert_true(g.sampling.has_seed);
    assert_true(g.sampling.seed == (uint64_t)-3);
    assert_int_equal(g.top_logprobs, 2);
    assert_string_equal(g.conversation, "conv_0123456789abcdef");
    mc_api_gen_free(&g);
}

static void test_chat_defaults_and_stop_string(void **state) {
    (void)state;
    struct mc_api_gen g;
    struct mc_api_error e;
    assert_int_equal(parse_chat("{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],"
                                "\"stop\":\"END\",\"max_tokens\":9}",
                                &g, &e),
                     MC_OK);
    assert_null(g.model);
    assert_int_equal(g.n, 1);
    assert_int_equal(g.max_tokens, 9);
    assert_int_equal(g.n_stop, 1);
    assert_string_equal(g.stop[0], "END");
    assert_false(g.stream || g.sampling.has_temperature || g.sampling.has_seed);
    mc_api_gen_free(&g);
}

static void test_chat_rejects_malformed_json_with_offset(void **state) {
    (void)state;
    expect_chat_error("{\"messages\": [", "", "invalid_json", "not valid JSON");
    expect_chat_error("{\"messages\": [", "", "invalid_json", "at byte 14");
    expect_chat_error("[1,2]", "", "invalid_json", "must be a JSON object, got an array");
    expect_chat_error("", "", "invalid_json", "empty");
    expect_chat_error("{\"n\":1,\"n\":2}", "", "invalid_json", "duplicate");
}

static void test_chat_rejects_invalid_utf8_with_offset(void **state) {
    (void)state;
    expect_chat_error("{\"messages\":\"\xff\"}", "", "invalid_utf8", "byte 0xff at offset 13");
    expect_chat_error("{\"a\":\"\xed\xa0\x80\"}", "", "invalid_utf8", "offset 6"); /* surrogate */
    expect_chat_error("{\"a\":\"\xc0\xaf\"}", "", "invalid_utf8", "offset 6");     /* overlong */
    expect_chat_error("{\"a\":\"\\ud800\"}", "", "invalid_json", "not valid JSON");
}

/* jansson's message names its JSON_ALLOW_NUL flag; the client gets plain words. */
static void test_chat_rejects_nul_in_a_string_in_plain_words(void **state) {
    (void)state;
    const char *b = "{\"messages\":\"a\\u0000b\"}";
    expect_chat_error(b, "", "invalid_json", "a NUL character (\\u0000) is not allowed in strings");
    expect_chat_error(b, "", "invalid_json", "at byte ");
    struct mc_api_gen g;
    struct mc_api_error e;
    assert_int_equal(parse_chat(b, &g, &e), MC_EINVAL);
    assert_null(strstr(e.msg, "JSON_ALLOW_NUL"));
}

static void test_chat_rejects_wrong_types_naming_the_field(void **state) {
    (void)state;
    const char *m = "\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]";
    char b[256];
    snprintf(b, sizeof(b), "{%s,\"max_tokens\":\"5\"}", m);
    expect_chat_error(b, "max_tokens", "invalid_type",
                      "'max_tokens' must be an integer, got a "
                      "string");
    snprintf(b, sizeof(b), "{%s,\"max_tokens\":2.5}", m);
    expect_chat_error(b, "max_tokens", "invalid_type", "must be an integer, got 2.5");
    snprintf(b, sizeof(b), "{%s,\"stream\":1}", m);
    expect_chat_error(b, "stream", "invalid_type", "'stream' must be a boolean, got an integer");
    snprintf(b, sizeof(b), "{%s,\"temperature\":\"hot\"}", m);
    expect_chat_error(b, "temperature", "invalid_type", "must be a number, got a string");
    snprintf(b, sizeof(b), "{%s,\"stop\":[\"a\",3]}", m);
    expect_chat_error(b, "stop[1]", "invalid_type", "'stop[1]' must be a string, got an integer");
    snprintf(b, sizeof(b), "{%s,\"stop\":{}}", m);
    expect_chat_error(b, "stop", "invalid_type", "a string or an array of strings");
    snprintf(b, sizeof(b), "{%s,\"stream_options\":{\"include_usage\":\"yes\"}}", m);
    expect_chat_error(b, "stream_options.include_usage", "invalid_type", "a boolean");
    expect_chat_error("{\"messages\":{}}", "messages", "invalid_type", "must be an array");
    expect_chat_error("{\"messages\":[\"hi\"]}", "messages[0]", "invalid_type",
                      "must be an object, got a string");
    expect_chat_error("{\"messages\":[{\"role\":\"user\",\"content\":5}]}", "messages[0].content",
                      "invalid_type", "a string or an array of content parts");
    expect_chat_error("{\"messages\":[{\"role\":\"user\"}]}", "messages[0].content",
                      "missing_field", "is required");
    expect_chat_error("{\"messages\":[{\"role\":\"user\",\"content\":null}]}",
                      "messages[0].content", "invalid_type",
                      "'messages[0].content' is null; only an assistant message may have null "
                      "content");
    expect_chat_error("{\"messages\":[{\"role\":\"system\",\"content\":null}]}",
                      "messages[0].content", "invalid_type", "is null");
    expect_chat_error("{\"model\":\"m\"}", "messages", "missing_field", "'messages' is required");
    expect_chat_error("{\"messages\":[]}", "messages", "invalid_value", "has 0 entries");
    expect_chat_error("{\"messages\":[{\"role\":\"robot\",\"content\":\"x\"}]}", "messages[0].role",
                      "invalid_value", "'robot'");
}

static void test_chat_rejects_absurd_numbers(void **state) {
    (void)state;
    const char *m = "\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]";
    char b[256];
    snprintf(b, sizeof(b), "{%s,\"max_tokens\":1000000000000}", m);
    expect_chat_error(b, "max_tokens", "invalid_value",
                      "'max_tokens' is 1000000000000, must be between 1 and 1048576");
    snprintf(b, sizeof(b), "{%s,\"max_tokens\":0}", m);
    expect_chat_error(b, "max_tokens", "invalid_value", "is 0, must be between 1");
    snprintf(b, sizeof(b), "{%s,\"n\":1000}", m);
    expect_chat_error(b, "n", "invalid_value", "'n' is 1000, must be between 1 and 16");
    snprintf(b, sizeof(b), "{%s,\"temperature\":1e300}", m);
    expect_chat_error(b, "temperature", "invalid_value", "must be between 0 and 2");
    snprintf(b, sizeof(b), "{%s,\"top_p\":-1}", m);
    expect_chat_error(b, "top_p", "invalid_value", "must be between 0 and 1");
    snprintf(b, sizeof(b), "{%s,\"top_logprobs\":50,\"logprobs\":true}", m);
    expect_chat_error(b, "top_logprobs", "invalid_value", "between 0 and 20");
    snprintf(b, sizeof(b), "{%s,\"top_logprobs\":2}", m);
    expect_chat_error(b, "top_logprobs", "invalid_value", "needs 'logprobs': true");
    snprintf(b, sizeof(b), "{%s,\"max_tokens\":1e999}", m);
    expect_chat_error(b, "", "invalid_json", "not valid JSON");
    /* Valid JSON, but beyond int64: the error names the field, not the body. */
    snprintf(b, sizeof(b), "{%s,\"seed\":99999999999999999999999}", m);
    expect_chat_error(b, "seed", "invalid_value",
                      "'seed' is 99999999999999999999999, outside the integers this server reads "
                      "(-9223372036854775808 to 9223372036854775807)");
    snprintf(b, sizeof(b), "{%s, \"seed\" :\n -18446744073709551615}", m);
    expect_chat_error(b, "seed", "invalid_value", "'seed' is -18446744073709551615, outside");
    snprintf(b, sizeof(b), "{%s,\"stop\":[18446744073709551615]}", m);
    expect_chat_error(b, "", "invalid_json", "too big integer");
    snprintf(b, sizeof(b), "{%s,\"stop\":[\"a\",\"b\",\"c\",\"d\",\"e\"]}", m);
    expect_chat_error(b, "stop", "invalid_value", "has 5 strings, at most 4");
    snprintf(b, sizeof(b), "{%s,\"stop\":\"\"}", m);
    expect_chat_error(b, "stop", "invalid_value", "empty string");
}

static void test_lora_scale_extension_is_parsed_and_bounded(void **state) {
    (void)state;
    const char *ok = "{\"model\":\"story\",\"prompt\":\"x\",\"lora_scale\":0.5}";
    struct mc_api_gen g;
    struct mc_api_error e = {0};
    assert_int_equal(mc_api_parse_completion(ok, strlen(ok), &g, &e), MC_OK);
    assert_true(g.has_lora_scale);
    assert_float_near(g.lora_scale, 0.5, 0);
    assert_string_equal(g.model, "story");
    mc_api_gen_free(&g);
    const char *none = "{\"prompt\":\"x\"}";
    assert_int_equal(mc_api_parse_completion(none, strlen(none), &g, &e), MC_OK);
    assert_false(g.has_lora_scale);
    mc_api_gen_free(&g);
    const char *m = "\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]";
    char b[256];
    snprintf(b, sizeof(b), "{%s,\"lora_scale\":17}", m);
    expect_chat_error(b, "lora_scale", "invalid_value",
                      "'lora_scale' is 17, must be between 0 and 16");
    snprintf(b, sizeof(b), "{%s,\"lora_scale\":-0.1}", m);
    expect_chat_error(b, "lora_scale", "invalid_value", "must be between 0 and 16");
    snprintf(b, sizeof(b), "{%s,\"lora_scale\":\"1\"}", m);
    expect_chat_error(b, "lora_scale", "invalid_type", "");
}

static void test_chat_rejects_unsupported_parts_and_features(void **state) {
    (void)state;
    expect_chat_error("{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\","
                      "\"image_url\":{\"url\":\"x\"}}]}]}",
                      "messages[0].content[0].type", "unsupported_value",
                      "content part type 'image_url' is not supported");
    expect_chat_error("{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\"}]}]}",
                      "messages[0].content[0].text", "missing_field", "is required");
    expect_chat_error("{\"messages\":[{\"role\":\"tool\",\"content\":\"x\"}]}", "messages[0].role",
                      "unsupported_value", "no tool calling");
    expect_chat_error("{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"tools\":[{}]}",
                      "tools", "unsupported_parameter", "not supported");
    expect_chat_error("{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"response_format\":"
                      "{\"type\":\"json_object\"}}",
                      "response_format", "unsupported_parameter", "structured output");
    expect_chat_error("{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"logit_bias\":"
                      "{\"5\":1}}",
                      "logit_bias", "unsupported_parameter", "logit bias");

    /* The defaults of the same fields are accepted. */
    struct mc_api_gen g;
    struct mc_api_error e;
    assert_int_equal(parse_chat("{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"tools\":"
                                "[],\"logit_bias\":{},\"response_format\":{\"type\":\"text\"},"
                                "\"tool_choice\":\"none\",\"presence_penalty\":0.5}",
                                &g, &e),
                     MC_OK);
    assert_float_near(g.sampling.presence_penalty, 0.5, 0);
    mc_api_gen_free(&g);
}

/* ---- Completions and embeddings --------------------------------------------------- */

static void test_completion_prompt_and_legacy_logprobs(void **state) {
    (void)state;
    struct mc_api_gen g;
    struct mc_api_error e = {0};
    const char *ok = "{\"prompt\":[\"Once\"],\"logprobs\":3,\"best_of\":1}";
    assert_int_equal(mc_api_parse_completion(ok, strlen(ok), &g, &e), MC_OK);
    assert_string_equal(g.prompt, "Once");
    assert_true(g.logprobs);
    assert_int_equal(g.top_logprobs, 3);
    assert_false(g.is_chat);
    mc_api_gen_free(&g);

    const char *bad[][3] = {
        {"{}", "prompt", "'prompt' is required"},
        {"{\"prompt\":[1,2]}", "prompt", "token arrays"},
        {"{\"prompt\":\"x\",\"logprobs\":6}", "logprobs", "between 0 and 5"},
        {"{\"prompt\":\"x\",\"echo\":true}", "echo", "not supported"},
        {"{\"prompt\":\"x\",\"best_of\":3}", "best_of", "must equal 'n'"},
        {"{\"prompt\":\"x\",\"suffix\":\"y\"}", "suffix", "insertion"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        memset(&e, 0, sizeof(e));
        assert_int_equal(mc_api_parse_completion(bad[i][0], strlen(bad[i][0]), &g, &e), MC_EINVAL);
        assert_string_equal(e.param, bad[i][1]);
        if (!strstr(e.msg, bad[i][2]))
            fail_msg("message '%s' lacks '%s'", e.msg, bad[i][2]);
    }
}

static void test_embeddings_inputs_and_format(void **state) {
    (void)state;
    struct mc_api_embed m;
    struct mc_api_error e = {0};
    const char *ok = "{\"input\":[\"a\",\"bc\"],\"model\":\"x\",\"encoding_format\":\"base64\"}";
    assert_int_equal(mc_api_parse_embed(ok, strlen(ok), &m, &e), MC_OK);
    assert_int_equal(m.n_inputs, 2);
    assert_string_equal(m.inputs[1], "bc");
    assert_true(m.base64);
    mc_api_embed_free(&m);

    const char *bad[][3] = {
        {"{}", "input", "'input' is required"},
        {"{\"input\":[]}", "input", "has 0 entries"},
        {"{\"input\":[\"a\",\"\"]}", "input[1]", "empty string"},
        {"{\"input\":[[1,2]]}", "input[0]", "token-id input"},
        {"{\"input\":5}", "input", "a string or an array of strings"},
        {"{\"input\":\"a\",\"encoding_format\":\"hex\"}", "encoding_format", "'hex'"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        memset(&e, 0, sizeof(e));
        assert_int_equal(mc_api_parse_embed(bad[i][0], strlen(bad[i][0]), &m, &e), MC_EINVAL);
        assert_string_equal(e.param, bad[i][1]);
        if (!strstr(e.msg, bad[i][2]))
            fail_msg("message '%s' lacks '%s'", e.msg, bad[i][2]);
    }
}

/* Every prefix of a request is rejected cleanly or accepted; never a crash or a leak
 * (ASan checks the latter). */
static void test_truncated_bodies_never_crash(void **state) {
    (void)state;
    const char *body = "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":"
                       "\"h\\u00e9\"}]}],\"stop\":[\"x\"],\"n\":2}";
    size_t n = strlen(body);
    for (size_t i = 0; i < n; i++) {
        struct mc_api_gen g;
        struct mc_api_error e = {0};
        assert_int_equal(mc_api_parse_chat(body, i, &g, &e), MC_EINVAL);
        assert_true(e.msg[0] != '\0');
    }
}

static void test_parse_survives_allocation_failures(void **state) {
    (void)state;
    const char *body = "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"},{\"role\":"
                       "\"assistant\",\"content\":[{\"type\":\"text\",\"text\":\"y\"}]}],"
                       "\"stop\":[\"a\",\"b\"],\"model\":\"m\",\"conversation\":\"c\"}";
    for (long nth = 1; nth < 40; nth++) {
        struct mc_api_gen g;
        struct mc_api_error e = {0};
        mc_mem_fail_after(nth);
        int rc = mc_api_parse_chat(body, strlen(body), &g, &e);
        mc_mem_fail_after(0);
        if (rc == MC_OK)
            mc_api_gen_free(&g);
        else
            assert_true(e.msg[0] != '\0');
    }
}

/* ---- Error body, UTF-8, SSE, metrics ---------------------------------------------- */

static void test_error_body_has_openai_shape(void **state) {
    (void)state;
    json_t *o = mc_http_error_body("bad thing", "invalid_request_error", "some_code", "field");
    char *s = json_dumps(o, JSON_COMPACT | JSON_SORT_KEYS);
    assert_string_equal(s, "{\"error\":{\"code\":\"some_code\",\"message\":\"bad thing\","
                           "\"param\":\"field\",\"type\":\"invalid_request_error\"}}");
    free(s);
    json_decref(o);
    o = mc_http_error_body("x", NULL, NULL, NULL);
    s = json_dumps(o, JSON_COMPACT | JSON_SORT_KEYS);
    assert_string_equal(s, "{\"error\":{\"code\":null,\"message\":\"x\",\"param\":null,"
                           "\"type\":\"invalid_request_error\"}}");
    free(s);
    json_decref(o);
}

static void test_utf8_checks(void **state) {
    (void)state;
    assert_int_equal(mc_utf8_invalid_at("h\xc3\xa9llo \xf0\x9f\x98\x80", 11), -1);
    assert_int_equal(mc_utf8_invalid_at("ab\x80", 3), 2);
    assert_int_equal(mc_utf8_invalid_at("\xf4\x90\x80\x80", 4), 0); /* above U+10FFFF */
    assert_int_equal(mc_utf8_invalid_at("a\xe2\x82", 3), 1);        /* truncated */
}

static void test_sse_framing(void **state) {
    (void)state;
    struct mc_buf b = {0};
    json_t *o = json_pack("{s:s}", "t", "line1\nline2");
    assert_int_equal(mc_sse_json(&b, o), MC_OK);
    assert_int_equal(mc_sse_done(&b), MC_OK);
    json_decref(o);
    assert_string_equal(b.data, "data: {\"t\":\"line1\\nline2\"}\n\ndata: [DONE]\n\n");
    mc_buf_consume(&b, 6);
    assert_int_equal(strncmp(b.data, "{\"t\"", 4), 0);
    mc_buf_free(&b);

    struct mc_buf capped = {.limit = 8};
    assert_int_equal(mc_buf_append(&capped, "12345678", 8), MC_OK);
    assert_int_equal(mc_buf_append(&capped, "9", 1), MC_ENOMEM);
    assert_int_equal(capped.len, 8);
    mc_buf_free(&capped);
}

/* A gauges callback as the server's: one line per tenant the metrics have seen. */
static void fake_gauges(struct mc_buf *o, const char (*tenants)[64], size_t n, void *user) {
    *(size_t *)user = n;
    for (size_t i = 0; i < n; i++)
        mc_buf_printf(o, "fake_queue{tenant=\"%s\"} 0\n", tenants[i]);
}

static void test_metrics_render_counts_per_tenant(void **state) {
    (void)state;
    struct mc_metrics *m;
    assert_int_equal(mc_metrics_create(&m, NULL), MC_OK);
    mc_metrics_request(m, "t_a", "/v1/chat/completions", 200);
    mc_metrics_request(m, "t_a", "/v1/chat/completions", 200);
    mc_metrics_request(m, "t_b", "/v1/chat/completions", 429);
    mc_metrics_rejection(m, "t_b", "rate_limit");
    mc_metrics_tokens(m, "t_a", 10, 4);
    mc_metrics_ttft(m, "t_a", 0.02);
    mc_metrics_inter_token(m, "t_a", 0.003);
    mc_metrics_adapter(m, "t_a", "story", 5, 24);
    mc_metrics_adapter(m, "t_a", "story", 5, 8);
    mc_metrics_adapter(m, "t_b", "story", 1, 1);
    struct mc_buf b = {0};
    size_t n_gauged = 0;
    assert_int_equal(mc_metrics_render(m, &b, fake_gauges, &n_gauged), MC_OK);
    assert_int_equal(n_gauged, 2);
    const char *want[] = {
        "mcai_requests_total{tenant=\"t_a\",route=\"/v1/chat/completions\",status=\"200\"} 2\n",
        "mcai_requests_total{tenant=\"t_b\",route=\"/v1/chat/completions\",status=\"429\"} 1\n",
        "mcai_rejections_total{tenant=\"t_b\",reason=\"rate_limit\"} 1\n",
        "mcai_prompt_tokens_total{tenant=\"t_a\"} 10\n",
        "mcai_completion_tokens_total{tenant=\"t_a\"} 4\n",
        "mcai_time_to_first_token_seconds_bucket{tenant=\"t_a\",le=\"0.01\"} 0\n",
        "mcai_time_to_first_token_seconds_bucket{tenant=\"t_a\",le=\"0.025\"} 1\n",
        "mcai_time_to_first_token_seconds_count{tenant=\"t_a\"} 1\n",
        "mcai_inter_token_seconds_bucket{tenant=\"t_a\",le=\"+Inf\"} 1\n",
        "# TYPE mcai_process_resident_memory_bytes gauge\n",
        "mcai_adapter_requests_total{tenant=\"t_a\",adapter=\"story\"} 2\n",
        "mcai_adapter_prompt_tokens_total{tenant=\"t_a\",adapter=\"story\"} 10\n",
        "mcai_adapter_completion_tokens_total{tenant=\"t_a\",adapter=\"story\"} 32\n",
        "mcai_adapter_requests_total{tenant=\"t_b\",adapter=\"story\"} 1\n",
        "fake_queue{tenant=\"t_a\"} 0\n",
        "fake_queue{tenant=\"t_b\"} 0\n",
    };
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++)
        if (!strstr(b.data, want[i]))
            fail_msg("metrics lack: %s", want[i]);
    mc_buf_free(&b);
    mc_metrics_free(m);
}

/* ---- A live listener -------------------------------------------------------------- */

static enum MHD_Result echo_handler(struct mc_http_req *r) {
    if (strcmp(r->url, "/error") == 0)
        return mc_http_reply_error_retry(r, 429, 7, "rate_limit_error", "rate_limit_exceeded",
                                         "slow down (%d)", 1);
    return mc_http_reply_json(
        r, 200, json_pack("{s:s,s:I}", "method", r->method, "len", (json_int_t)r->body_len));
}

struct reply {
    long status;
    struct mc_buf body;
    char request_id[64];
    char retry_after[16];
};

static size_t on_body(char *p, size_t size, size_t n, void *user) {
    struct reply *rep = user;
    mc_buf_append(&rep->body, p, size * n);
    return size * n;
}

static size_t on_header(char *p, size_t size, size_t n, void *user) {
    struct reply *rep = user;
    size_t len = size * n;
    if (len > 14 && strncasecmp(p, "x-request-id: ", 14) == 0)
        snprintf(rep->request_id, sizeof(rep->request_id), "%.*s", (int)(len - 16), p + 14);
    if (len > 13 && strncasecmp(p, "Retry-After: ", 13) == 0)
        snprintf(rep->retry_after, sizeof(rep->retry_after), "%.*s", (int)(len - 15), p + 13);
    return len;
}

/* Sends body (n bytes) to path; chunked uses Transfer-Encoding: chunked. */
static void do_post(int port, const char *path, const char *body, size_t n, bool chunked,
                    struct reply *rep) {
    memset(rep, 0, sizeof(*rep));
    CURL *c = curl_easy_init();
    char url[128];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d%s", port, path);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)n);
    struct curl_slist *h = NULL;
    h = curl_slist_append(h, "Expect:");
    if (chunked)
        h = curl_slist_append(h, "Transfer-Encoding: chunked");
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, rep);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, rep);
    curl_easy_perform(c);
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &rep->status);
    curl_slist_free_all(h);
    curl_easy_cleanup(c);
}

static int n_done;
static void count_done(struct mc_http_req *r, void *user) {
    (void)r;
    (void)user;
    n_done++;
}

/* "/big" with the header "x-allow: yes" may send 8 KiB; everything else the default. */
static size_t big_route_limit(struct mc_http_req *r) {
    const char *allow = mc_http_header(r, "x-allow");
    return strcmp(r->url, "/big") == 0 && allow && strcmp(allow, "yes") == 0 ? 8192 : 0;
}

static void test_listener_body_limit_per_request(void **state) {
    (void)state;
    struct mc_http_config cfg = {.host = "127.0.0.1",
                                 .port = 0,
                                 .max_body_bytes = 1024,
                                 .body_limit = big_route_limit,
                                 .handler = echo_handler};
    struct mc_http *h;
    struct mc_err err = {0};
    assert_int_equal(mc_http_start(&cfg, &h, &err), MC_OK);
    int port = mc_http_port(h);
    static char body[6000];
    memset(body, 'a', sizeof(body));
    struct reply rep;
    do_post(port, "/big", body, sizeof(body), false, &rep);
    assert_int_equal(rep.status, 413); /* no x-allow header */
    assert_non_null(strstr(rep.body.data, "1024 bytes"));
    mc_buf_free(&rep.body);

    CURL *c = curl_easy_init();
    char url[128];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/big", port);
    struct curl_slist *hd = curl_slist_append(NULL, "x-allow: yes");
    hd = curl_slist_append(hd, "Expect:");
    memset(&rep, 0, sizeof(rep));
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)sizeof(body));
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, hd);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &rep);
    curl_easy_perform(c);
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &rep.status);
    curl_slist_free_all(hd);
    curl_easy_cleanup(c);
    assert_int_equal(rep.status, 200);
    assert_string_equal(rep.body.data, "{\"method\":\"POST\",\"len\":6000}");
    mc_buf_free(&rep.body);
    mc_http_stop(h);
}

static void test_listener_caps_body_and_tags_requests(void **state) {
    (void)state;
    struct mc_http_config cfg = {.host = "127.0.0.1",
                                 .port = 0,
                                 .max_body_bytes = 1024,
                                 .handler = echo_handler,
                                 .on_done = count_done};
    struct mc_http *h;
    struct mc_err err = {0};
    assert_int_equal(mc_http_start(&cfg, &h, &err), MC_OK);
    int port = mc_http_port(h);
    assert_true(port > 0);

    struct reply rep;
    do_post(port, "/x", "{\"a\":1}", 7, false, &rep);
    assert_int_equal(rep.status, 200);
    assert_string_equal(rep.body.data, "{\"method\":\"POST\",\"len\":7}");
    assert_int_equal(strncmp(rep.request_id, "req_", 4), 0);
    assert_int_equal(strlen(rep.request_id), 20);
    mc_buf_free(&rep.body);

    /* Declared too large: refused from the headers. Then chunked: refused at the end. */
    size_t big = 10u << 20;
    char *body = mc_malloc(big);
    memset(body, 'a', big);
    for (int chunked = 0; chunked < 2; chunked++) {
        do_post(port, "/x", body, chunked ? 4096 : big, chunked, &rep);
        assert_int_equal(rep.status, 413);
        json_t *o = json_loads(rep.body.data, 0, NULL);
        assert_non_null(o);
        json_t *e = json_object_get(o, "error");
        assert_string_equal(json_string_value(json_object_get(e, "code")), "request_too_large");
        assert_string_equal(json_string_value(json_object_get(e, "type")), "invalid_request_error");
        assert_non_null(strstr(json_string_value(json_object_get(e, "message")), "1024 bytes"));
        json_decref(o);
        mc_buf_free(&rep.body);
    }
    mc_free(body);

    do_post(port, "/error", "", 0, false, &rep);
    assert_int_equal(rep.status, 429);
    assert_string_equal(rep.retry_after, "7");
    assert_non_null(strstr(rep.body.data, "\"message\":\"slow down (1)\""));
    mc_buf_free(&rep.body);

    mc_http_stop(h);
    assert_int_equal(n_done, 4);
}

int main(void) {
    curl_global_init(CURL_GLOBAL_DEFAULT);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_chat_parses_every_field),
        cmocka_unit_test(test_chat_defaults_and_stop_string),
        cmocka_unit_test(test_chat_rejects_malformed_json_with_offset),
        cmocka_unit_test(test_chat_rejects_invalid_utf8_with_offset),
        cmocka_unit_test(test_chat_rejects_nul_in_a_string_in_plain_words),
        cmocka_unit_test(test_chat_rejects_wrong_types_naming_the_field),
        cmocka_unit_test(test_chat_rejects_absurd_numbers),
        cmocka_unit_test(test_chat_rejects_unsupported_parts_and_features),
        cmocka_unit_test(test_completion_prompt_and_legacy_logprobs),
        cmocka_unit_test(test_embeddings_inputs_and_format),
        cmocka_unit_test(test_truncated_bodies_never_crash),
        cmocka_unit_test(test_parse_survives_allocation_failures),
        cmocka_unit_test(test_error_body_has_openai_shape),
        cmocka_unit_test(test_utf8_checks),
        cmocka_unit_test(test_sse_framing),
        cmocka_unit_test(test_metrics_render_counts_per_tenant),
        cmocka_unit_test(test_lora_scale_extension_is_parsed_and_bounded),
        cmocka_unit_test(test_listener_body_limit_per_request),
        cmocka_unit_test(test_listener_caps_body_and_tags_requests),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    curl_global_cleanup();
    return failed;
}
