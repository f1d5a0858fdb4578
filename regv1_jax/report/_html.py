"""A self-contained HTML page of a markdown report (images embedded)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["REPORT_CSS", "report_html"]

REPORT_CSS = """
body { font-family: sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em;
       line-height: 1.4; }
.table-wrap { overflow-x: auto; max-width: 100%; }
table { border-collapse: collapse; margin: 0.5em 0; }
td, th { border: 1px solid #ccc; padding: 3px 8px; font-size: 13px; text-align: left; }
th { background: #f3f3f3; }
blockquote { background: #fff4e5; border-left: 4px solid #f90; margin: 1em 0;
             padding: 4px 12px; }
img { max-width: 100%; height: auto; }
code { overflow-wrap: anywhere; }
li, p { overflow-wrap: anywhere; }
"""


def _data_uri(path: Path) -> str:
    import base64

    mime = {"png": "image/png", "svg": "image/svg+xml", "jpg": "image/jpeg"}[
        path.suffix.lstrip(".").lower()]
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def report_html(md: str, folder: Path, title: str) -> str:
    """A self-contained HTML page of the Markdown report: every local image embedded as a
    data URI (a missing one is an error, not a broken link), tables in a scrolling box."""
    import html as _html
    import re

    import markdown

    body = markdown.markdown(md, extensions=["tables"])

    def embed(m):
        src = m.group(2)
        if src.startswith(("data:", "http:", "https:")):
            return m.group(0)
        path = Path(folder) / src
        if not path.is_file():
            raise FileNotFoundError(f"report image {src!r} not found in {folder}")
        return m.group(1) + _data_uri(path) + m.group(3)

    body = re.sub(r'(<img[^>]*\ssrc=")([^"]+)(")', embed, body)
    body = body.replace("<table>", '<div class="table-wrap"><table>').replace(
        "</table>", "</table></div>")
    return ("<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>{_html.escape(title)}</title><style>{REPORT_CSS}</style></head><body>"
            + body + "</body></html>\n")
