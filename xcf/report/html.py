"""A self-contained HTML report: sections of text, tables and figures (embedded as base64 PNG).

Each figure is also written beside the report as PNG and PDF (for papers).  The HTML file is written
to a temporary file in the same folder and renamed into place, so a report is never half-written.
"""

from __future__ import annotations

import base64
import html
import io
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from matplotlib.figure import Figure

from xcf._io import atomic_write, format_number, slug
from xcf.report.figures import save_figure

__all__ = ["Report", "check_writable"]

_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; max-width: 1100px;
       margin: 2em auto; padding: 0 1em; color: #222; line-height: 1.45; }
h1 { border-bottom: 2px solid #333; padding-bottom: .2em; }
h2 { margin-top: 2em; border-bottom: 1px solid #ccc; padding-bottom: .15em; }
table { border-collapse: collapse; margin: .8em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: .3em .6em; text-align: right; }
th { background: #f2f2f2; } td:first-child, th:first-child { text-align: left; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: .9em; color: #555; }
.verdict { padding: .6em 1em; border-radius: 4px; font-weight: 600; }
.flag { background: #fde2e1; border: 1px solid #e0a3a0; }
.pass { background: #e3f4e1; border: 1px solid #9fcf99; }
.note { color: #555; font-size: .92em; }
"""


def check_writable(out_dir: str | os.PathLike) -> Path:
    """Create ``out_dir`` if needed and check that files can be written there (clear error otherwise)."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".xcf-write-test-"):
            pass
    except OSError as e:
        raise PermissionError(f"cannot write to output directory {out}: {e.strerror or e}") from e
    return out


def _fmt(v: Any) -> str:
    return html.escape(format_number(v))


@dataclass
class Report:
    """Collects sections and writes ``report.html`` plus each figure as PNG and PDF.

    Example:
        >>> import tempfile
        >>> r = Report("xcf audit").section("Data").text("1,797 digits").table([{"a": 1}])
        >>> r.write(tempfile.mkdtemp()).name
        'report.html'
    """

    title: str
    parts: list[str] = field(default_factory=list)
    figures: list[tuple[str, Figure]] = field(default_factory=list)

    def section(self, title: str) -> "Report":
        self.parts.append(f"<h2>{html.escape(title)}</h2>")
        return self

    def text(self, text: str, cls: Optional[str] = None) -> "Report":
        attr = f' class="{cls}"' if cls else ""
        self.parts.append(f"<p{attr}>{html.escape(text)}</p>")
        return self

    def verdict(self, text: str, flagged: bool) -> "Report":
        cls = "flag" if flagged else "pass"
        self.parts.append(f'<p class="verdict {cls}">{html.escape(text)}</p>')
        return self

    def table(self, rows: Sequence[Mapping[str, Any]], columns: Optional[Sequence[str]] = None) -> "Report":
        if not rows:
            return self
        columns = list(columns or rows[0].keys())
        head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
        body = "".join("<tr>" + "".join(f"<td>{_fmt(r.get(c, ''))}</td>" for c in columns) + "</tr>" for r in rows)
        self.parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        return self

    def figure(self, name: str, fig: Figure, caption: str = "") -> "Report":
        """Embed ``fig`` (as PNG) and keep it to write as ``name.png`` / ``name.pdf``."""
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
        data = base64.b64encode(buf.getvalue()).decode()
        cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
        self.parts.append(f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,{data}">{cap}</figure>')
        self.figures.append((name, fig))
        return self

    def render(self) -> str:
        body = "\n".join(self.parts)
        return (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(self.title)}"
                f"</title><style>{_CSS}</style></head><body><h1>{html.escape(self.title)}</h1>\n{body}\n</body></html>\n")

    def write(self, out_dir: str | os.PathLike, name: str = "report.html") -> Path:
        """Write the figures (PNG + PDF) and then the HTML, atomically; return the HTML's path."""
        out = check_writable(out_dir)
        for fig_name, fig in self.figures:
            save_figure(fig, out / "figures" / slug(fig_name, default="figure"), formats=("png", "pdf"))
        text = self.render()
        atomic_write(out / name, lambda fh: fh.write(text.encode("utf-8")))
        return out / name
