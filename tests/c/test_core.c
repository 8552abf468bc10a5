#include <string.h>

#include "dropnorm/dropnorm.h"
#include "check.h"

int main(void)
{
    char expect[32];
    snprintf(expect, sizeof expect, "%d.%d.%d", DN_VERSION_MAJOR, DN_VERSION_MINOR,
             DN_VERSION_PATCH);
    CHECK(strcmp(dn_version(), expect) == 0);
    CHECK(strcmp(dn_version(), DN_VERSION_STRING) == 0);
    CHECK(dn_version_number() == DN_VERSION_NUMBER);

    /* pinned values */
    CHECK(DN_OK == 0);
    CHECK(DN_ERR_NULL_POINTER == 1);
    CHECK(DN_ERR_BATCH_TOO_SMALL == 6);
    CHECK(strcmp(dn_status_str(DN_OK), "success") == 0);
    for (int st = 1; st <= 8; st++) {
        const char *text = dn_status_str((dn_status)st);
        CHECK(text != NULL && strcmp(text, "unknown status") != 0);
        for (int other = st + 1; other <= 8; other++)
            CHECK(strcmp(text, dn_status_str((dn_status)other)) != 0);
    }
    CHECK(strcmp(dn_status_str((dn_status)999), "unknown status") == 0);

    CHECK(dn_get_max_threads() >= 1);
    CHECK(dn_set_num_threads(0) == DN_ERR_BAD_VALUE);
    CHECK(dn_set_num_threads(2) == DN_OK);
    CHECK(dn_get_max_threads() == (dn_openmp_enabled() ? 2 : 1));
    return check_report("test_core");
}
