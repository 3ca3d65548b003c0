/* corral-limits: bounds that corrald, corralctl and the state of an upgrade
 * must agree on. Header only. */
#pragma once

/* The most workers an instance may have (`workers`, `--workers`, scale);
 * slot ids are below it. */
#define CORRAL_WORKERS_MAX 4096
