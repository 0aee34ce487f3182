/* What every collector's events share, defined once for the BPF programs and for Python
 * (harness/collectors/cstruct.py reads it through the headers that include it).
 * Only #define constants here. */
#ifndef PB_COMMON_H
#define PB_COMMON_H

/* which end of its connection the observed process is */
#define PB_ROLE_UNKNOWN 0
#define PB_ROLE_CLIENT 1
#define PB_ROLE_SERVER 2

/* which way the bytes of an event went, seen from the observed process */
#define PB_DIR_SEND 0
#define PB_DIR_RECV 1

#endif
