/* cmd-metrics: "metrics", the Prometheus text format (version 0.0.4, with
 * the OpenMetrics conventions: counters end in _total, base units, HELP and
 * TYPE for every family) for one instance (-i, -s) or every instance that
 * `list` finds.
 *
 * Built from each instance's status reply, so the master gains no HTTP
 * server and no formatting of its own: a scrape is one corralctl (see
 * units/corral-metrics@.service). The samples of a family are written
 * together, every instance's, as the format requires. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "ctl.h"
#include "instance.h"
#include "util.h"

typedef enum Source {
        SRC_INSTANCE,     /* a number in the status reply */
        SRC_COUNTER,      /* a number in its "counters" */
        SRC_SLOT,         /* a number of each slot's worker */
        SRC_SPECIAL,      /* computed below, by name */
} Source;

typedef struct Metric {
        const char *name;
        const char *type;
        const char *help;
        Source source;
        const char *key;
        double scale;
} Metric;

static const Metric metrics[] = {
        { "corral_up", "gauge", "Whether the instance answered (1) or not (0).", SRC_SPECIAL, NULL, 1 },
        { "corral_build_info", "gauge", "corrald's version, as a label; always 1.", SRC_SPECIAL, NULL, 1 },
        { "corral_workers", "gauge", "Workers the instance should run.", SRC_INSTANCE, "workers", 1 },
        { "corral_workers_ready", "gauge", "Workers that said READY=1.", SRC_INSTANCE, "ready", 1 },
        { "corral_generation", "gauge", "The generation of the configuration (bumped by each reload).",
          SRC_INSTANCE, "generation", 1 },
        { "corral_uptime_seconds", "gauge", "Seconds since the instance started (kept across upgrades).",
          SRC_INSTANCE, "uptime_ms", 0.001 },
        { "corral_draining", "gauge", "1 while drained with corralctl drain.", SRC_SPECIAL, NULL, 1 },
        { "corral_gave_up", "gauge", "1 once the instance gave up on its workers (restart.limit).", SRC_SPECIAL,
          NULL, 1 },
        { "corral_upgrades_total", "counter", "In-place upgrades of corrald.", SRC_INSTANCE, "upgrades", 1 },
        { "corral_reloads_total", "counter", "Reloads, by result.", SRC_SPECIAL, NULL, 1 },
        { "corral_orphans_reaped_total", "counter", "Children that were no worker, reaped as PID 1 or subreaper.",
          SRC_INSTANCE, "orphans_reaped", 1 },
        { "corral_messages_total", "counter", "Worker messages addressed to the master.", SRC_COUNTER, "messages",
          1 },
        { "corral_notify_dropped_total", "counter", "Notify datagrams from no worker, dropped.", SRC_COUNTER,
          "notify_dropped", 1 },
        { "corral_handoffs_total", "counter", "Connections handed to workers (every balance but shared).",
          SRC_COUNTER, "handed", 1 },
        { "corral_handoffs_retried_total", "counter", "Hand-offs a worker could not take, tried on another.",
          SRC_COUNTER, "handoffs_retried", 1 },
        { "corral_handoffs_taken_back_total", "counter",
          "Connections a worker left unread (it stalled or died), handed to another.", SRC_COUNTER,
          "handoffs_taken_back", 1 },
        { "corral_handoffs_lost_total", "counter", "Accepted connections closed without a worker (stopping).",
          SRC_COUNTER, "handoffs_lost", 1 },
        { "corral_accept_errors_total", "counter", "Failed accept(2) calls of the master.", SRC_COUNTER,
          "accept_errors", 1 },
        { "corral_worker_ready", "gauge", "1 when the slot's worker is ready.", SRC_SPECIAL, NULL, 1 },
        { "corral_worker_restarts_total", "counter", "Restarts of the slot.", SRC_SLOT, "restarts", 1 },
        { "corral_worker_cpu_seconds_total", "counter", "CPU time of the slot's worker.", SRC_SLOT, "cpu_ms",
          0.001 },
        { "corral_worker_resident_memory_bytes", "gauge", "Resident memory of the slot's worker.", SRC_SLOT,
          "rss_kb", 1024 },
        { "corral_worker_handoffs_total", "counter", "Connections handed to the slot's worker.", SRC_SLOT, "handed",
          1 },
        { "corral_worker_open_connections", "gauge", "Handed-off connections the worker has open (least-conn).",
          SRC_SLOT, "connections", 1 },
        { "corral_worker_unread_handoffs", "gauge", "Hand-offs the worker has not read yet.", SRC_SLOT, "unread",
          1 },
        { "corral_worker_messages_dropped_total", "counter", "Messages to the worker dropped (it did not read).",
          SRC_SLOT, "messages_dropped", 1 },
};

/* A label value, escaped as the format says (backslash, quote, newline). */
static void put_label(FILE *f, const char *s) {
        fputc('"', f);
        for (; s && *s; s++) {
                if (*s == '\\' || *s == '"')
                        fputc('\\', f);
                if (*s == '\n') {
                        fputs("\\n", f);
                        continue;
                }
                fputc(*s, f);
        }
        fputc('"', f);
}

static void put_value(FILE *f, double v) {
        if (v == floor(v) && fabs(v) < 1e15)
                fprintf(f, " %.0f\n", v);
        else
                fprintf(f, " %.6g\n", v);
}

static bool number(const cJSON *o, const char *key, double *ret) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
        if (!cJSON_IsNumber(v))
                return false;
        *ret = v->valuedouble;
        return true;
}

/* One family's samples of one instance (status NULL: it did not answer). */
static void samples(FILE *f, const Metric *m, const char *name, const cJSON *status) {
        double v;

        if (!status) {
                if (strcmp(m->name, "corral_up") == 0) {
                        fprintf(f, "corral_up{instance=");
                        put_label(f, name);
                        fprintf(f, "} 0\n");
                }
                return;
        }
        const char *state = ctl_json_str(status, "state");
        switch (m->source) {
        case SRC_INSTANCE:
        case SRC_COUNTER:
                if (!number(m->source == SRC_COUNTER ? cJSON_GetObjectItemCaseSensitive(status, "counters") : status,
                            m->key, &v))
                        return;
                fprintf(f, "%s{instance=", m->name);
                put_label(f, name);
                fputc('}', f);
                put_value(f, v * m->scale);
                return;
        case SRC_SLOT: {
                const cJSON *w;
                cJSON_ArrayForEach(w, cJSON_GetObjectItemCaseSensitive(status, "slots")) {
                        double id;
                        if (!number(w, "id", &id) || !number(w, m->key, &v))
                                continue;
                        fprintf(f, "%s{instance=", m->name);
                        put_label(f, name);
                        fprintf(f, ",slot=\"%.0f\"}", id);
                        put_value(f, v * m->scale);
                }
                return;
        }
        case SRC_SPECIAL:
                break;
        }
        if (strcmp(m->name, "corral_up") == 0 || strcmp(m->name, "corral_draining") == 0 ||
            strcmp(m->name, "corral_gave_up") == 0) {
                v = strcmp(m->name, "corral_up") == 0 ? 1
                  : strcmp(m->name, "corral_draining") == 0
                          ? cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(status, "draining"))
                          : streq_ptr(state, "gave-up");
                fprintf(f, "%s{instance=", m->name);
                put_label(f, name);
                fputc('}', f);
                put_value(f, v);
        } else if (strcmp(m->name, "corral_build_info") == 0) {
                fprintf(f, "corral_build_info{instance=");
                put_label(f, name);
                fprintf(f, ",version=");
                put_label(f, ctl_json_str(status, "version") ?: "unknown");
                fprintf(f, "} 1\n");
        } else if (strcmp(m->name, "corral_reloads_total") == 0) {
                const cJSON *k = cJSON_GetObjectItemCaseSensitive(status, "counters");
                static const char * const results[] = { "done", "failed" };
                for (size_t i = 0; i < ELEMENTSOF(results); i++) {
                        char key[32];
                        snprintf(key, sizeof(key), "reloads_%s", results[i]);
                        if (!number(k, key, &v))
                                continue;
                        fprintf(f, "corral_reloads_total{instance=");
                        put_label(f, name);
                        fprintf(f, ",result=\"%s\"}", results[i]);
                        put_value(f, v);
                }
        } else if (strcmp(m->name, "corral_worker_ready") == 0) {
                const cJSON *w;
                cJSON_ArrayForEach(w, cJSON_GetObjectItemCaseSensitive(status, "slots")) {
                        double id;
                        if (!number(w, "id", &id))
                                continue;
                        fprintf(f, "corral_worker_ready{instance=");
                        put_label(f, name);
                        fprintf(f, ",slot=\"%.0f\"} %d\n", id, streq_ptr(ctl_json_str(w, "state"), "ready"));
                }
        }
}

static void metrics_print(FILE *f, char * const *names, cJSON * const *statuses, size_t n) {
        for (size_t i = 0; i < ELEMENTSOF(metrics); i++) {
                fprintf(f, "# HELP %s %s\n# TYPE %s %s\n", metrics[i].name, metrics[i].help, metrics[i].name,
                        metrics[i].type);
                for (size_t k = 0; k < n; k++)
                        samples(f, &metrics[i], names[k], statuses[k]);
        }
}

size_t metrics_write(FILE *f, char * const *paths, uint64_t timeout_usec) {
        size_t n = strv_length(paths);
        char *names[n + 1];
        cJSON *statuses[n + 1];
        size_t answered = 0;
        for (size_t i = 0; i < n; i++) {
                statuses[i] = NULL;
                if (ctl_status_of(paths[i], timeout_usec, &statuses[i]) >= 0)
                        answered++;
                const char *inst = statuses[i] ? ctl_json_str(statuses[i], "instance") : NULL;
                names[i] = inst ? strdup(inst) : instance_name_from_path(paths[i]);
        }
        metrics_print(f, names, statuses, n);
        for (size_t i = 0; i < n; i++) {
                free(names[i]);
                cJSON_Delete(statuses[i]);
        }
        return answered;
}

int cmd_metrics(Ctl *ctl, char **args) {
        _cleanup_strv_free_ char **paths = NULL;
        int r;

        if (args[0])
                return ctl_usage_error("metrics takes no arguments, got \"%s\"", args[0]);
        if (ctl->instance || ctl->socket) {
                if ((r = ctl_resolve(ctl)) != 0)
                        return r;
                if (strv_extend(&paths, ctl->path) < 0)
                        return ctl_error(CTL_EXIT_FAILED, "Out of memory.");
        } else if (instance_discover(&paths) < 0)
                return ctl_error(CTL_EXIT_FAILED, "Out of memory.");

        /* One instance: as long as any request; every instance: each
         * briefly, so one that hangs does not hold up the others. */
        bool one = ctl->instance || ctl->socket;
        size_t answered = metrics_write(stdout, paths, one ? CTL_TIMEOUT_USEC : CTL_METRICS_TIMEOUT_USEC);
        /* With -i or -s the one instance must answer; every instance found
         * is reported up or down. */
        if ((ctl->instance || ctl->socket) && answered == 0)
                return ctl_error(CTL_EXIT_UNREACHABLE, "%s does not answer.", ctl->path);
        return CTL_EXIT_OK;
}
