/* libFuzzer driver for sqlscan_classify.  The input is copied into a buffer
 * of exactly its size so ASan flags any read past len, and the result is
 * checked for invariants the pooler relies on. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "sqlscan.h"

static bool kind_has_name(sql_kind k)
{
    return k == SQL_SET || k == SQL_RESET || k == SQL_DEALLOCATE || k == SQL_PREPARE;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *buf = malloc(size ? size : 1);
    if (!buf) return 0;
    if (size) memcpy(buf, data, size);

    sql_info info;
    memset(&info, 0x5a, sizeof(info));
    sqlscan_classify(buf, size, &info);

    size_t name_len = strnlen(info.name, sizeof(info.name));
    if (info.kind < SQL_OTHER || info.kind > SQL_BEGIN) abort();
    if (name_len >= sizeof(info.name)) abort();                      /* not terminated */
    if (kind_has_name(info.kind) != (name_len > 0)) abort();         /* name iff kind has one */

    /* The scanner has no hidden state: the same text gives the same answer. */
    sql_info again;
    sqlscan_classify(buf, size, &again);
    if (again.kind != info.kind || again.multi != info.multi ||
        again.session_lock != info.session_lock || strcmp(again.name, info.name) != 0)
        abort();

    free(buf);
    return 0;
}
