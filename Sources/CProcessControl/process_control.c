#include "process_control.h"
#include <sys/prctl.h>

int cloudscan_set_undumpable(void) { return prctl(PR_SET_DUMPABLE, 0, 0, 0, 0); }

int cloudscan_is_dumpable(void) { return prctl(PR_GET_DUMPABLE, 0, 0, 0, 0); }
