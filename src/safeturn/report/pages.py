"""Dialogue pages of the HTML report: failing dialogues first, a fixed number per page.

The main report holds the first page; the others are static HTML files in a sibling folder
`<report>.pages/`, joined by plain links. Links work from file:// with no server (browsers
refuse fetch() of local JSON), and the main file's size does not grow with the run.
"""

from __future__ import annotations

import base64
import io
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from safeturn.errors import ImageError, SafeturnError
from safeturn.run.results import SampleOutcome
from safeturn.schema import ImagePart, Message

PAGE_SIZE = 100
"""Dialogues per page (the main report shows the first page)."""

GROUPS = ("unsafe", "error", "invalid", "other")
"""Dialogue groups in page order; `failing_rank` is the index into this."""

ORDER_TEXT = (
    "dialogues with a turn judged unsafe come first (attack succeeded, or an unsafe reply to a "
    "benign request), then samples that errored, then dialogues with an invalid verdict, "
    "then the rest; run order within each group"
)

_THUMB_PX = 180
_OURS = re.compile(r"(page-\d{4,}|index)\.html")


def failing_rank(outcome: SampleOutcome) -> int:
    """0 unsafe, 1 error, 2 invalid verdict, 3 the rest (the index of its group in `GROUPS`)."""
    if outcome.earliest_unsafe_turn is not None:
        return 0
    if outcome.status == "error":
        return 1
    if any(t.verdict is not None and t.verdict.label == "invalid" for t in outcome.turns):
        return 2
    return 3


@dataclass(frozen=True)
class Entry:
    """One dialogue as a page shows it: its place in the report order and its user turns."""

    position: int
    """1-based place in the report's order (the anchor `#d-<position>`)."""
    outcome: SampleOutcome
    group: str
    users: list[Message]
    """The sample's user messages; turn k of the outcome answers `users[k - 1]`."""


@dataclass(frozen=True)
class Page:
    """One page of dialogues."""

    number: int
    count: int
    """How many pages the report has."""
    total: int
    """How many dialogues the report has."""
    entries: list[Entry]

    @property
    def first(self) -> int:
        """Position of the page's first dialogue (0 on an empty page)."""
        return self.entries[0].position if self.entries else 0

    @property
    def last(self) -> int:
        """Position of the page's last dialogue (0 on an empty page)."""
        return self.entries[-1].position if self.entries else 0

    def groups(self) -> dict[str, int]:
        """Dialogues on this page per group, in `GROUPS` order, groups with none left out."""
        counts = Counter(e.group for e in self.entries)
        return {g: counts[g] for g in GROUPS if counts[g]}


def paginate(outcomes: Sequence[SampleOutcome], size: int = PAGE_SIZE) -> list[Page]:
    """Failing dialogues first (a stable sort, so run order within a group), `size` a page.

    A run without dialogues still has one (empty) page: the main report.
    """
    if size < 1:
        raise ValueError(f"page size must be at least 1, got {size}")
    ranked = sorted(((failing_rank(o), o) for o in outcomes), key=lambda pair: pair[0])
    entries = [
        Entry(i + 1, o, GROUPS[rank], [m for m in o.sample.dialogue.messages if m.role == "user"])
        for i, (rank, o) in enumerate(ranked)
    ]
    chunks = [entries[i : i + size] for i in range(0, len(entries), size)] or [[]]
    return [Page(n + 1, len(chunks), len(entries), chunk) for n, chunk in enumerate(chunks)]


def pages_dir(report: Path) -> Path:
    """The folder of a report's other pages: `report.html` → `report.pages`."""
    folder = report.with_name(report.stem + ".pages")
    return folder if folder != report else report.with_name(report.name + ".pages")


def page_file(number: int) -> str:
    """File name of page `number` (≥ 2) inside the pages folder."""
    return f"page-{number:04d}.html"


@dataclass(frozen=True)
class Links:
    """Relative hrefs from one page of a report to the others."""

    main: str
    """Link to the main report (page 1)."""
    folder: str
    """Prefix of the pages folder's files: `report.pages/` from the main file, `` inside it."""

    @classmethod
    def from_main(cls, report_name: str) -> Links:
        """Links as the main report (`report_name`, a file name) sees them."""
        return cls(main=quote(report_name), folder=quote(pages_dir(Path(report_name)).name) + "/")

    @classmethod
    def from_folder(cls, report_name: str) -> Links:
        """Links as a file in the pages folder sees them."""
        return cls(main="../" + quote(report_name), folder="")

    def page(self, number: int) -> str:
        """The link to page `number`."""
        return self.main if number == 1 else self.folder + page_file(number)

    def entry(self, page: Page, entry: Entry) -> str:
        """The link to one dialogue on `page`."""
        return f"{self.page(page.number)}#d-{entry.position}"

    @property
    def index(self) -> str:
        """The link to the index of pages."""
        return self.folder + "index.html"


class Thumbnails:
    """Small PNG data URLs of images, each image shrunk once however many dialogues show it.

    Runs reuse a few images across many dialogues (one per seed, every strategy and turn
    count); decoding each again made a 1,000-dialogue report take seconds.
    """

    def __init__(self) -> None:
        self._cache: dict[tuple[str, str | bytes], str] = {}

    def __call__(self, image: ImagePart) -> str:
        """The thumbnail's data URL, or an empty string if the image cannot be read."""
        source = image.path or image.data or image.url or ""
        key = ("path" if image.path else "bytes", source)
        if key not in self._cache:
            self._cache[key] = _thumbnail(image)
        return self._cache[key]


def _thumbnail(image: ImagePart) -> str:
    try:
        picture = image.load()
    except ImageError:
        return ""
    picture.thumbnail((_THUMB_PX, _THUMB_PX))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def clear_pages(folder: Path) -> None:
    """Remove the page files an earlier report left in `folder`, and the folder if then empty.

    Only names this module writes are removed; anything else a user put there stays.
    """
    if not folder.is_dir():
        return
    for child in folder.iterdir():
        if _OURS.fullmatch(child.name) and child.is_file():
            child.unlink()
    if not any(folder.iterdir()):
        folder.rmdir()


def write_pages(
    report: Path, pages: Sequence[Page], render: Callable[[Page | None, Links], str]
) -> list[Path]:
    """Write pages 2.. and their index beside `report`, replacing any earlier ones.

    `render(page, links)` returns a page's HTML (the index when `page` is None). Returns the
    files written; none when everything fits on the main report's page.
    """
    folder = pages_dir(report)
    clear_pages(folder)
    if len(pages) < 2:
        return []
    if folder.exists() and not folder.is_dir():
        raise SafeturnError(f"{folder} is not a folder: the report's dialogue pages go there")
    folder.mkdir(parents=True, exist_ok=True)
    links = Links.from_folder(report.name)
    written = []
    for page in pages[1:]:
        path = folder / page_file(page.number)
        path.write_text(render(page, links), encoding="utf-8")
        written.append(path)
    index = folder / "index.html"
    index.write_text(render(None, links), encoding="utf-8")
    return [*written, index]
