/* unmix.h compiles as strict C99 (built as part of the test suite). */
#include "unmix.h"

int unmix_header_check(void);

int unmix_header_check(void) {
    unmix_handle* handle = NULL;
    unmix_status status = unmix_open("model", "openvino", 0, &handle);
    if (status != UNMIX_OK) return (int)status;
    status = unmix_run(handle, NULL, 1, 1, 1, NULL, NULL, NULL);
    unmix_close(handle);
    return (int)status + unmix_abi_version();
}
