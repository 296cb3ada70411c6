/* test_cli.c - the inference commands as a user runs them: `mcai generate` (text and
 * --ids) against every reference file in ../shared/reference, `mcai chat` with piped
 * input, `mcai model synth`, `mcai bench`, and --help and exit codes of each command.
 *
 * Commands run as child processes (fork + exec, no shell, so prompts need no quoting)
 * with stdout captured; stderr goes to /dev/null. The mcai binary is $MCAI (default
 * build/mcai). */
#include "test_util.h"

#include <dirent.h>
#include <fcntl.h>
#include <jansson.h> /* json_load_file, json_object_get, json_array_size */
#include <stdbool.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define OUT_MAX (1 << 16)

static const char *mcai_bin(void) {
    const char *m = getenv("MCAI");
    return m && *m ? m : "build/mcai";
}

/* Runs argv (argv[0] is replaced by the mcai binary) with stdin from in (NULL: none) and
 * stdout into out (NUL-terminated). Returns the exit status, -1 if killed. */
static int run(const char *const *argv, const char *in, char *out, size_t size) {
    int to_child[2], from_child[2];
    assert_int_equal(pipe(to_child), 0);
    assert_int_equal(pipe(from_child), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        dup2(to_child[0], 0);
        dup2(from_child[1], 1);
        int devnull = open("/dev/null", O_WRONLY);
        dup2(devnull, 2);
        close(to_child[1]);
        close(from_child[0]);
        char *args[64];
        int n = 0;
        args[n++] = (char *)mcai_bin();
        for (int i = 1; argv[i] && n < 63; i++)
            args[n++] = (char *)argv[i];
        args[n] = NULL;
        execv(args[0], args);
        _exit(127);
    }
    close(to_child[0]);
    close(from_child[1]);
    if (in)
        assert_int_equal(write(to_child[1], in, strlen(in)), (ssize_t)strlen(in));
    close(to_child[1]);
    size_t got = 0;
    ssize_t r;
    while ((r = read(from_child[0], out + got, size - 1 - got)) > 0)
        got += (size_t)r;
    out[got] = '\0';
    close(from_child[0]);
    int st;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* ---- generate against the reference files ---------------------------------------- */

static void expect_ids(const char *out, json_t *want, const char *what) {
    char buf[4096] = "";
    size_t n = 0;
    for (size_t i = 0; i < json_array_size(want); i++)
        n += (size_t)snprintf(buf + n, sizeof(buf) - n, "%s%lld", i ? " " : "",
                              (long long)json_integer_value(json_array_get(want, i)));
    snprintf(buf + n, sizeof(buf) - n, "\n");
    if (strcmp(out, buf) != 0)
        fail_msg("%s: got ids '%s', expected '%s'", what, out, buf);
}

/* Runs every case of one reference file; returns the number of cases. */
static int check_reference_file(const char *dir, const char *file) {
    char path[1024], model[1024], lora[1024], scale[32], n_predict[16];
    snprintf(path, sizeof(path), "%s/%s", dir, file);
    json_error_t je;
    json_t *root = json_load_file(path, 0, &je);
    if (!root)
        fail_msg("%s: %s", path, je.text);
    snprintf(model, sizeof(model), "%s/../models/%s", dir,
             json_string_value(json_object_get(root, "model_file")));
    snprintf(n_predict, sizeof(n_predict), "%lld",
             (long long)json_integer_value(json_object_get(root, "n_predict")));
    json_t *cases = json_object_get(root, "cases");
    static char out[OUT_MAX];
    for (size_t i = 0; i < json_array_size(cases); i++) {
        json_t *c = json_array_get(cases, i);
        const char *prompt = json_string_value(json_object_get(c, "prompt"));
        const char *argv[20] = {"mcai",    "generate", "-m", model,          "-p", prompt, "-n",
                                n_predict, "--temp",   "0",  "--ignore-eos", "-t", "1",    NULL};
        json_t *l = json_object_get(c, "lora");
        if (l) {
            snprintf(lora, sizeof(lora), "%s/../models/%s:%s", dir,
                     json_string_value(json_object_get(l, "file")),
                     (snprintf(scale, sizeof(scale), "%g",
                               json_number_value(json_object_get(l, "scale"))),
                      scale));
            argv[13] = "--lora";
            argv[14] = lora;
        }

        /* --ids prints the ids; without it the text, which is greedy_text. */
        char what[256];
        snprintf(what, sizeof(what), "%s case %zu", file, i);
        int at = l ? 15 : 13;
        argv[at] = "--ids";
        int rc = run(argv, NULL, out, sizeof(out));
        if (rc != 0)
            fail_msg("%s: mcai generate exited %d", what, rc);
        expect_ids(out, json_object_get(c, "greedy_tokens"), what);
        argv[at] = NULL;
        rc = run(argv, NULL, out, sizeof(out));
        if (rc != 0)
            fail_msg("%s: mcai generate (text) exited %d", what, rc);
        char want[4096];
        snprintf(want, sizeof(want), "%s\n", json_string_value(json_object_get(c, "greedy_text")));
        if (strcmp(out, want) != 0)
            fail_msg("%s: text '%s', expected '%s'", what, out, want);
    }
    int n = (int)json_array_size(cases);
    json_decref(root);
    return n;
}

static void test_generate_matches_every_reference_file(void **state) {
    (void)state;
    char dir[512];
    test_shared_path(dir, sizeof(dir), "reference");
    DIR *d = opendir(dir);
    assert_non_null(d);
    int n_files = 0, n_cases = 0;
    for (struct dirent *e; (e = readdir(d)) != NULL;) {
        size_t len = strlen(e->d_name);
        if (len < 12 || strcmp(e->d_name + len - 12, ".greedy.json") != 0)
            continue;
        n_cases += check_reference_file(dir, e->d_name);
        n_files++;
    }
    closedir(d);
    print_message("[ generate ] %d reference files, %d cases\n", n_files, n_cases);
    assert_true(n_files >= 5);
    assert_true(n_cases >= 19);
}

/* ---- chat ------------------------------------------------------------------------- */

/* A piped chat answers with what `generate --chat` gives for the same message, and
 * /reset starts over, so the same message gets the same answer again. */
static void test_chat_piped_matches_generate_chat(void **state) {
    (void)state;
    char model[512];
    test_shared_path(model, sizeof(model), "models/stories260K.gguf");
    static char want[OUT_MAX], got[OUT_MAX];
    const char *gen[] = {"mcai",   "generate", "-m", model, "--chat", "-p", "Hello",
                         "--temp", "0",        "-n", "16",  "-t",     "1",  NULL};
    assert_int_equal(run(gen, NULL, want, sizeof(want)), 0);
    assert_true(strlen(want) > 1);

    const char *chat[] = {"mcai", "chat", "-m", model, "--temp", "0", "-n", "16", "-t", "1", NULL};
    assert_int_equal(run(chat, "Hello\n/reset\nHello\n/exit\n", got, sizeof(got)), 0);
    /* Built with memcpy: the sanitizer build (-O1) rejects a snprintf of two OUT_MAX
     * strings into a smaller buffer as a possible truncation. */
    static char twice[2 * OUT_MAX];
    size_t n = strlen(want);
    memcpy(twice, want, n);
    memcpy(twice + n, want, n + 1);
    assert_string_equal(got, twice);

    /* End of input ends the chat like /exit. */
    assert_int_equal(run(chat, "Hello\n", got, sizeof(got)), 0);
    assert_string_equal(got, want);
}

/* ---- model synth and bench --------------------------------------------------------- */

static void test_model_synth_is_reproducible_and_runs(void **state) {
    (void)state;
    char vocab[512], a[64], b[64];
    test_shared_path(vocab, sizeof(vocab), "tokenizer-tests/ggml-vocab-llama-spm.gguf");
    snprintf(a, sizeof(a), "/tmp/mcai-test-synth-%d-a.gguf", (int)getpid());
    snprintf(b, sizeof(b), "/tmp/mcai-test-synth-%d-b.gguf", (int)getpid());
    static char out[OUT_MAX], out2[OUT_MAX];
    const char *synth[] = {"mcai",   "model",      "synth",    "--like", vocab,
                           "--embd", "64",         "--layers", "2",      "--heads",
                           "4",      "--kv-heads", "2",        "--ff",   "128",
                           "--type", "Q8_0",       "-o",       a,        NULL};
    assert_int_equal(run(synth, NULL, out, sizeof(out)), 0);
    synth[18] = b;
    assert_int_equal(run(synth, NULL, out, sizeof(out)), 0);

    /* Same seed, same bytes. */
    const char *info_a[] = {"mcai", "info", a, NULL};
    assert_int_equal(run(info_a, NULL, out, sizeof(out)), 0);
    assert_non_null(strstr(out, "llama.embedding_length"));
    assert_non_null(strstr(out, "blk.1.ffn_down.weight"));
    assert_null(strstr(out, "blk.2."));
    FILE *fa = fopen(a, "rb"), *fb = fopen(b, "rb");
    assert_non_null(fa);
    assert_non_null(fb);
    int ca, cb;
    long pos = 0;
    do {
        ca = fgetc(fa);
        cb = fgetc(fb);
        if (ca != cb)
            fail_msg("synth output differs at byte %ld", pos);
        pos++;
    } while (ca != EOF);
    fclose(fa);
    fclose(fb);

    /* The model generates, greedily the same ids twice. */
    const char *gen[] = {"mcai", "generate", "-m", a,       "-p",           "Hello", "-n",
                         "6",    "--temp",   "0",  "--ids", "--ignore-eos", NULL};
    assert_int_equal(run(gen, NULL, out, sizeof(out)), 0);
    assert_int_equal(run(gen, NULL, out2, sizeof(out2)), 0);
    assert_string_equal(out, out2);
    int n_ids = 0;
    for (char *p = strtok(out, " \n"); p; p = strtok(NULL, " \n")) {
        long id = strtol(p, NULL, 10);
        assert_true(id >= 0 && id < 32000);
        n_ids++;
    }
    assert_int_equal(n_ids, 6);

    /* A shape that cannot work is a usage error. */
    const char *bad[] = {"mcai", "model",  "synth", "--like", vocab, "--heads",
                         "5",    "--embd", "64",    "-o",     a,     NULL};
    assert_int_equal(run(bad, NULL, out, sizeof(out)), 2);
    unlink(a);
    unlink(b);
}

/* Reads "label: <number>" from bench output. */
static double bench_figure(const char *out, const char *label) {
    const char *p = strstr(out, label);
    if (!p)
        fail_msg("no '%s' in bench output:\n%s", label, out);
    p += strlen(label);
    while (*p == ' ' || *p == ':')
        p++;
    return strtod(p, NULL);
}

/* Every figure the bench prints is there and consistent with the others (no timing is
 * asserted: only that the numbers relate as their definitions say). */
static void test_bench_prints_every_figure(void **state) {
    (void)state;
    char model[512];
    test_shared_path(model, sizeof(model), "models/stories260K.gguf");
    static char out[OUT_MAX];
    const char *argv[] = {"mcai", "bench", "-m", model, "-t", "1", "-n", "16", NULL};
    assert_int_equal(run(argv, NULL, out, sizeof(out)), 0);
    double gen = bench_figure(out, "generation:");
    double weights_mb = bench_figure(out, "weights per token:");
    double bw = bench_figure(out, "memory bandwidth:");
    double bound = bench_figure(out, "bandwidth bound:");
    assert_non_null(strstr(out, "prompt:"));
    assert_true(gen > 0 && bw > 0 && weights_mb > 0);
    /* bound = bandwidth / weights per token */
    /* Weights are printed to 0.1 MB, which is coarse for a small model. */
    assert_float_near(bound, bw * 1e9 / (weights_mb * 1e6), bound * (0.051 / weights_mb + 0.01));

    const char *gen_tps = strstr(out, "generation:");
    const char *eq = strstr(gen_tps, "= ");
    assert_non_null(eq);
    double tps = strtod(eq + 2, NULL);
    assert_float_near(bench_figure(out, "fraction of bound:"), tps / bound, 0.006);
}

/* ---- help and exit codes ----------------------------------------------------------- */

static void test_help_and_exit_codes(void **state) {
    (void)state;
    static const char *const cmds[] = {"info",     "tokenize", "generate", "chat",
                                       "quantize", "bench",    "serve",    "tenant",
                                       "key",      "audit",    "lora",     "kb"};
    static char out[OUT_MAX];
    for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++) {
        const char *argv[] = {"mcai", cmds[i], "--help", NULL};
        if (run(argv, NULL, out, sizeof(out)) != 0)
            fail_msg("mcai %s --help did not exit 0", cmds[i]);
        char want[64];
        snprintf(want, sizeof(want), "usage: mcai %s", cmds[i]);
        if (!strstr(out, want))
            fail_msg("mcai %s --help prints no '%s'", cmds[i], want);
    }
    const char *synth_help[] = {"mcai", "model", "synth", "--help", NULL};
    assert_int_equal(run(synth_help, NULL, out, sizeof(out)), 0);
    assert_non_null(strstr(out, "usage: mcai model synth"));

    const char *unknown[] = {"mcai", "frobnicate", NULL};
    assert_int_equal(run(unknown, NULL, out, sizeof(out)), 2);

    /* Values that are wrong for any model are usage errors, found before loading. */
    char model[512];
    test_shared_path(model, sizeof(model), "models/stories260K.gguf");
    static const char *const bad[][2] = {
        {"--top-p", "2"}, {"--min-p", "5"}, {"--repeat-penalty", "0"},
        {"--stop", ""},   {"-t", "9999"},   {"--seed", "-1"},
        {"-n", "x"},      {"--temp", "abc"}};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        const char *argv[] = {"mcai", "generate", "-m",      model, "-p",
                              "hi",   bad[i][0],  bad[i][1], NULL};
        int rc = run(argv, NULL, out, sizeof(out));
        if (rc != 2)
            fail_msg("generate %s '%s': exit %d, expected 2", bad[i][0], bad[i][1], rc);
        assert_string_equal(out, "");
    }
    const char *chat_bad[] = {"mcai", "chat", "-m", model, "--top-p", "3", NULL};
    assert_int_equal(run(chat_bad, "hi\n", out, sizeof(out)), 2);

    /* A missing model is a runtime error, and nothing goes to stdout. */
    const char *missing[] = {"mcai", "generate", "-m", "/nonexistent.gguf", "-p", "hi", NULL};
    assert_int_equal(run(missing, NULL, out, sizeof(out)), 1);
    assert_string_equal(out, "");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_generate_matches_every_reference_file),
        cmocka_unit_test(test_chat_piped_matches_generate_chat),
        cmocka_unit_test(test_model_synth_is_reproducible_and_runs),
        cmocka_unit_test(test_bench_prints_every_figure),
        cmocka_unit_test(test_help_and_exit_codes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
