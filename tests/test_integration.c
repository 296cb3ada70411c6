/* test_integration.c - runs tests/integration/run.sh (a real `mcai serve` driven with curl
 * and the openai npm client) and asserts it passed. The script prints one line per check
 * and names any that failed; this program only turns its exit status into a cmocka
 * result. MCAI (set by `make test`) names the binary under test. */
#include "test_util.h"

#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void test_integration_script_passes(void **state) {
    (void)state;
    fflush(stdout);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        execlp("sh", "sh", "tests/integration/run.sh", (char *)NULL);
        _exit(127);
    }
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    if (WEXITSTATUS(status) != 0)
        fail_msg("tests/integration/run.sh failed (exit %d): see the FAIL lines above",
                 WEXITSTATUS(status));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_integration_script_passes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
