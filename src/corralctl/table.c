/* table: column-aligned text output; see table.h.
 *
 * Invariant: cells[] holds ncols header cells followed by the data cells in
 * row-major order; n counts them all, so a partial last row is allowed and
 * printed with its missing cells empty. */
#include <stdarg.h>
#include <stdint.h>
#include <string.h>

#include "table.h"

struct Table {
        size_t ncols;
        char **cells;
        size_t n, alloc;
        bool *right;
        size_t max_width;       /* 0: unlimited */
};

Table *table_free(Table *t) {
        if (!t)
                return NULL;
        for (size_t i = 0; i < t->n; i++)
                free(t->cells[i]);
        free(t->cells);
        free(t->right);
        free(t);
        return NULL;
}

/* Copy s, replacing control characters so that text from the server or a
 * worker cannot move the cursor or break the alignment. */
static char *sanitized_copy(const char *s) {
        char *c = strdup(s ? s : "-");
        if (!c)
                return NULL;
        for (char *p = c; *p; p++)
                if ((unsigned char) *p < 0x20 || *p == 0x7f)
                        *p = '?';
        return c;
}

int table_add(Table *t, const char *cell) {
        if (t->n == t->alloc) {
                size_t na = t->alloc ? t->alloc * 2 : 64;
                char **nc = realloc(t->cells, na * sizeof(char *));
                if (!nc)
                        return -ENOMEM;
                t->cells = nc;
                t->alloc = na;
        }
        char *c = sanitized_copy(cell);
        if (!c)
                return -ENOMEM;
        t->cells[t->n++] = c;
        return 0;
}

int table_addf(Table *t, const char *fmt, ...) {
        _cleanup_free_ char *s = NULL;
        va_list ap;
        va_start(ap, fmt);
        int r = vasprintf(&s, fmt, ap);
        va_end(ap);
        if (r < 0) {
                s = NULL;
                return -ENOMEM;
        }
        return table_add(t, s);
}

Table *table_new(size_t ncols, const char * const *headers) {
        Table *t = calloc(1, sizeof(Table));
        if (!t)
                return NULL;
        t->ncols = ncols;
        t->right = calloc(ncols, sizeof(bool));
        if (!t->right)
                return table_free(t);
        for (size_t i = 0; i < ncols; i++)
                if (table_add(t, headers[i]) < 0)
                        return table_free(t);
        return t;
}

void table_set_right(Table *t, size_t col, bool right) {
        if (col < t->ncols)
                t->right[col] = right;
}

void table_set_max_width(Table *t, size_t columns) {
        t->max_width = columns;
}

/* Bytes of s that hold at most n UTF-8 characters, never splitting one. */
static size_t utf8_prefix(const char *s, size_t n) {
        size_t i = 0;
        for (size_t chars = 0; s[i]; chars++) {
                if (chars == n)
                        break;
                i++;
                while (((unsigned char) s[i] & 0xc0) == 0x80)
                        i++;
        }
        return i;
}

size_t table_rows(const Table *t) {
        return (t->n - t->ncols + t->ncols - 1) / t->ncols;
}

int table_print(const Table *t, FILE *f) {
        size_t width[t->ncols];
        memset(width, 0, sizeof(width));
        for (size_t i = 0; i < t->n; i++)
                width[i % t->ncols] = MAX(width[i % t->ncols], strlen(t->cells[i]));

        /* Room left for the last column on a line of max_width. */
        size_t prefix = 0, room = SIZE_MAX;
        for (size_t col = 0; col + 1 < t->ncols; col++)
                prefix += width[col] + 2;
        if (t->max_width > 0)
                room = t->max_width > prefix ? t->max_width - prefix : 0;

        size_t rows = table_rows(t) + 1;
        for (size_t row = 0; row < rows; row++) {
                for (size_t col = 0; col < t->ncols; col++) {
                        size_t i = row * t->ncols + col;
                        const char *cell = i < t->n ? t->cells[i] : "";
                        bool last = col + 1 == t->ncols;
                        int w = (int) width[col];
                        if (last && !t->right[col] && room == 0)
                                break; /* no room at all: not even the gap */
                        if (col > 0)
                                fputs("  ", f);
                        if (t->right[col])
                                fprintf(f, "%*s", w, cell);
                        else if (last) /* no trailing blanks */
                                fwrite(cell, 1, utf8_prefix(cell, room), f);
                        else
                                fprintf(f, "%-*s", w, cell);
                }
                fputc('\n', f);
        }
        return ferror(f) ? -EIO : 0;
}
