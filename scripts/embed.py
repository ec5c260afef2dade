#!/usr/bin/env python3
"""embed.py IN OUT SYMBOL: writes a C file holding IN's bytes as
`const unsigned char SYMBOL[]` and `const size_t SYMBOL_len` (the status
page is served from the binary: no files to install, nothing to go stale)."""
import sys

src, out, sym = sys.argv[1:4]
data = open(src, "rb").read()
with open(out, "w") as f:
    f.write("/* generated from %s by scripts/embed.py: do not edit */\n" % src.rsplit("/", 1)[-1])
    f.write("#include <stddef.h>\n")
    f.write("const unsigned char %s[] = {\n" % sym)
    for i in range(0, len(data), 16):
        f.write("    " + ", ".join("0x%02x" % b for b in data[i:i + 16]) + ",\n")
    f.write("    0x00};\n")
    f.write("const size_t %s_len = %d;\n" % (sym, len(data)))
