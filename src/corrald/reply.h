/* reply: how work that outlives a request answers the client that asked
 * for it, without knowing where the client is. A plan (rollout.c) holds a
 * client and these operations; control.c provides them for its
 * connections (control_reply_ops), the unit tests a fake. */
#pragma once

#include <cjson/cJSON.h>
#include <stdbool.h>

typedef struct ReplyOps {
        void *(*ref)(void *client);
        void (*unref)(void *client);
        /* A progress line. */
        void (*progress)(void *client, const char *line);
        /* The one result: ok with its fields (a JSON object, taken; may be
         * NULL), or failed with why. */
        void (*result)(void *client, bool ok, cJSON *fields, const char *error);
} ReplyOps;
