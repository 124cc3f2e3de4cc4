/* Does nothing: the shim's PROC_START is the only record. */
#include "tt_test.h"

int main(void)
{
    return 0;
}
