/* corral-internal: what the library's own tests need and users do not.
 * Not installed; not exported by libcorral.sym. */
#pragma once

/* Forget the channel state (closing kept fds, freeing kept messages), as
 * if the process had just started, so one test binary can run many cases. */
void libcorral_reset_for_tests(void);

/* Let the next fd-limit report go out now, as if the last one had been
 * sent more than a second ago. */
void libcorral_fd_limit_rearm_for_tests(void);
