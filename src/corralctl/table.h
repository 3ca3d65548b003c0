/* table: column-aligned text tables for corralctl's human output.
 *
 * Cells are appended row by row; table_print() computes each column's width
 * and writes the header and rows separated by two spaces. Cells are copied
 * and sanitised (control characters become '?') because they often come
 * from the server or from workers' STATUS= text. Pure; never logs. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#include "macros.h"

typedef struct Table Table;

/* A table with ncols columns and these header cells. NULL on ENOMEM. */
Table *table_new(size_t ncols, const char * const *headers);
/* Accepts NULL; returns NULL. */
Table *table_free(Table *t);
static inline void table_freep(Table **t) {
        table_free(*t);
}
#define _cleanup_table_free_ _cleanup_(table_freep)

/* Right-align column col (numbers). */
void table_set_right(Table *t, size_t col, bool right);

/* Cut the last column (when left-aligned) so that no line is wider than
 * columns (counted in UTF-8 characters); 0, the default, cuts nothing. */
void table_set_max_width(Table *t, size_t columns);

/* Append one cell; rows fill left to right. NULL is shown as "-".
 * Returns 0 or -ENOMEM. */
int table_add(Table *t, const char *cell);
int table_addf(Table *t, const char *fmt, ...) _printf_(2, 3);

/* Number of complete or partial data rows. */
size_t table_rows(const Table *t);

/* Write the header and all rows to f. Returns 0 or -EIO. */
int table_print(const Table *t, FILE *f);
