// with_header.cuh -- the constant that with_header.cu writes.
#define EMU_TEST_VALUE 1
