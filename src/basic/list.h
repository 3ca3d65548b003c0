/* Intrusive doubly linked lists, systemd style: an object that can be on a
 * list embeds LIST_FIELDS(Type, name); the head is a plain pointer.
 *
 *     struct Worker { ...; LIST_FIELDS(Worker, workers); };
 *     Worker *head = NULL;
 *     LIST_PREPEND(workers, head, w);
 *     LIST_REMOVE(workers, head, w);
 *     LIST_FOREACH(workers, i, head) ...
 *
 * Removal is O(1) and leaves the item's links NULL. No allocation. */
#pragma once

#define LIST_FIELDS(t, name) t *name##_next, *name##_prev

#define LIST_PREPEND(name, head, item)                                  \
        do {                                                            \
                __typeof__(*(head)) **_head = &(head), *_item = (item); \
                _item->name##_prev = NULL;                              \
                _item->name##_next = *_head;                            \
                if (*_head)                                             \
                        (*_head)->name##_prev = _item;                  \
                *_head = _item;                                         \
        } while (0)

#define LIST_REMOVE(name, head, item)                                          \
        do {                                                                   \
                __typeof__(*(head)) **_head = &(head), *_item = (item);        \
                if (_item->name##_next)                                        \
                        _item->name##_next->name##_prev = _item->name##_prev;  \
                if (_item->name##_prev)                                        \
                        _item->name##_prev->name##_next = _item->name##_next;  \
                else                                                           \
                        *_head = _item->name##_next;                           \
                _item->name##_next = _item->name##_prev = NULL;                \
        } while (0)

/* Safe against removing i inside the body. */
#define LIST_FOREACH(name, i, head)                                                       \
        for (__typeof__(*(head)) *i = (head), *_n##i = i ? i->name##_next : NULL; i;      \
             i = _n##i, _n##i = i ? i->name##_next : NULL)
