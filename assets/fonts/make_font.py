"""Rebuild DejaVuSans-subset.ttf (needs fontTools; input: Debian's fonts-dejavu-core DejaVuSans.ttf).

1. Subset to the characters the plots use.
2. plotters 0.3.7's ab_glyph renderer draws each glyph's bitmap at the pen position, dropping the
   glyph's left side bearing, which spaces letters unevenly ("validati on"). Every advance is replaced by
   advance − lsb + L (L = mean lsb of a–z): the rendered ink then lands within ±0.03 em of where a correct
   renderer puts it. Outlines are untouched; SVG viewers use their own fonts.
"""
import subprocess, sys
from fontTools.ttLib import TTFont

src = sys.argv[1] if len(sys.argv) > 1 else "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
out = "DejaVuSans-subset.ttf"
subprocess.check_call([
    "pyftsubset", src,
    "--unicodes=U+0020-007E,U+00A0-00FF,U+0391-03C9,U+2012-2015,U+2018-201D,U+2026,U+2032,U+2070-2079,"
    "U+2080-2089,U+2190-2193,U+2212,U+2248,U+2260,U+2264,U+2265,U+221E,U+00B2,U+00B7,U+00D7",
    "--layout-features=kern", "--no-hinting", "--desubroutinize", f"--output-file={out}",
])
f = TTFont(out)
hm = f["hmtx"].metrics
cmap = f.getBestCmap()
lows = [hm[cmap[ord(c)]][1] for c in "abcdefghijklmnopqrstuvwxyz"]
L = round(sum(lows) / len(lows))
for g, (adv, lsb) in list(hm.items()):
    if adv > 0:
        hm[g] = (max(1, adv - lsb + L), lsb)
f["name"].setName("DejaVu Sans (splicevi plots)", 4, 3, 1, 0x409)
f.save(out)
