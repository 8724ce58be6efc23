#include <zlib.h>

// inflateInit2 is a macro: wrap it for Swift.
static inline int cloudscan_inflate_init2(z_stream *stream, int windowBits) {
    return inflateInit2(stream, windowBits);
}
