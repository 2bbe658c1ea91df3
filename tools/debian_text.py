#!/usr/bin/env python3
"""Extracts openly licensed English prose from a Debian documentation package.

Run here (the development machine reaches Debian's archive):
    python3 tools/debian_text.py --out .device/shared/extra/python-docs.txt
It downloads a documentation package (default python3.11-doc, the Python
documentation, PSF License 2.0; the bundled model also uses postgresql-doc-15,
PostgreSQL Licence, and debian-handbook's en-US pages, GPL-2+), unpacks it in a temporary folder and writes the text of its HTML pages'
paragraphs and list items, one block per paragraph separated by blank lines
(the same layout as ../shared/data/text). Code listings are skipped so the
training text stays English prose. Standard library only.
"""
import argparse
import glob
import html.parser
import os
import subprocess
import tempfile


class Paragraphs(html.parser.HTMLParser):
    KEEP = {"p", "li", "dd", "h1", "h2", "h3"}
    SKIP = {"pre", "code", "script", "style", "nav", "footer"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.blocks, self.buf, self.depth_keep, self.depth_skip = [], [], 0, 0
        self.divs = []  # for each open <div>: is it a paragraph (DocBook's class="para")

    def handle_starttag(self, tag, attrs):
        if tag == "div":
            para = ("class", "para") in attrs
            self.divs.append(para)
            if para:
                self.flush()
                self.depth_keep += 1
        elif tag in self.SKIP:
            self.depth_skip += 1
        elif tag in self.KEEP:
            self.flush()
            self.depth_keep += 1

    def handle_endtag(self, tag):
        if tag == "div":
            if self.divs and self.divs.pop() and self.depth_keep:
                self.depth_keep -= 1
                self.flush()
        elif tag in self.SKIP and self.depth_skip:
            self.depth_skip -= 1
        elif tag in self.KEEP and self.depth_keep:
            self.depth_keep -= 1
            self.flush()

    def handle_data(self, data):
        if self.depth_keep and not self.depth_skip:
            self.buf.append(data)

    def flush(self):
        text = " ".join("".join(self.buf).split())
        self.buf = []
        if len(text) >= 40 and text.count(" ") >= 6:  # prose, not labels
            self.blocks.append(text)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--package", default="python3.11-doc")
    ap.add_argument("--pages", default="usr/share/doc/**/*.html",
                    help="glob of the HTML pages inside the package (e.g. one language)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["apt-get", "download", args.package], cwd=tmp, check=True,
                       stdout=subprocess.DEVNULL)
        deb = glob.glob(os.path.join(tmp, "*.deb"))[0]
        subprocess.run(["dpkg", "-x", deb, os.path.join(tmp, "root")], check=True)
        pages = sorted(glob.glob(os.path.join(tmp, "root", args.pages), recursive=True))
        blocks = []
        for page in pages:
            p = Paragraphs()
            with open(page, encoding="utf-8", errors="replace") as f:
                p.feed(f.read())
            blocks.extend(p.blocks)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        f.write("\n\n".join(blocks) + "\n")
    print(f"{args.out}: {len(blocks)} paragraphs from {len(pages)} pages")


if __name__ == "__main__":
    main()
