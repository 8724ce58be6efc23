#ifndef CLOUDSCAN_PROCESS_CONTROL_H
#define CLOUDSCAN_PROCESS_CONTROL_H

/// Makes this process non-dumpable (prctl PR_SET_DUMPABLE 0): its /proc/<pid> entries
/// (environ, mem, maps…) become root's, and no process of the same user may ptrace it. prctl is
/// variadic, so Swift reaches it through this function. Returns 0 or -1 (errno set).
int cloudscan_set_undumpable(void);

/// 1 when this process is dumpable, 0 when not, -1 on error.
int cloudscan_is_dumpable(void);

#endif
