"""The command's progress bar inside one image, fed by `upscale(..., progress=bar)`.

`upscale` reports its work as ``progress(done, total, stage)``: ``stage`` "grm" counts GRM
tiles (an untiled image is one), "dit" counts Patch-DiT patch-evaluations (planned before
the first one runs). `ImageBar` turns those calls into one tqdm bar per image:

* the bar's position is the sum over stages of what is done, its length the sum of what
  each stage announced, so the GRM's tiles and the DiT's evaluations share one bar (the
  length grows when a stage first reports: its total is not known before);
* a stage whose ``done`` drops has started a new round (should a caller report per band):
  the finished round is kept, so the bar never runs backwards;
* the postfix says where each stage is (``GRM tiles 1/1, DiT evaluations 300/1200``).

A folder run keeps its images bar and reuses one `ImageBar` (``leave=False``, second line)
that `start` resets for each image. Nothing is drawn while ``enabled`` is false.
"""

from __future__ import annotations

import sys
from typing import Any, Callable

__all__ = ["ImageBar", "STAGE_NAMES"]

# How the postfix names each stage; unknown stages show under their own name.
STAGE_NAMES = {"grm": "GRM tiles", "dit": "DiT evaluations"}


class ImageBar:
    """Callable ``(done, total, stage)`` drawing one image's progress (see the module docstring).

    ``enabled``: draw at all (false under ``-q`` and, unless asked, when stderr is not a
    terminal). ``leave``: keep the finished bar on screen (single image) or clear it (the
    folder's second line). ``position``: the tqdm line (1 below a folder's images bar).
    ``make_bar``: the tqdm constructor (tests pass a recorder).
    """

    def __init__(
        self,
        *,
        enabled: bool = True,
        leave: bool = True,
        position: int | None = None,
        file: Any = None,
        make_bar: Callable[..., Any] | None = None,
    ):
        self.enabled, self.leave, self.position = enabled, leave, position
        self.file = file if file is not None else sys.stderr
        self._make_bar = make_bar
        self._bar: Any = None
        self._desc = ""
        self._done: dict[str, int] = {}  # stage → done in its current round
        self._total: dict[str, int] = {}  # stage → total of its current round
        self._base_done: dict[str, int] = {}  # stage → done in its finished rounds
        self._base_total: dict[str, int] = {}

    # -------------------------------------------------------------- what is counted

    @property
    def done(self) -> int:
        """Units finished over every stage and round of the current image."""
        return sum(self._base_done.values()) + sum(self._done.values())

    @property
    def total(self) -> int:
        """Units announced over every stage and round of the current image."""
        return sum(self._base_total.values()) + sum(self._total.values())

    def stages(self) -> dict[str, tuple[int, int]]:
        """Per stage: (done, total) over its rounds, in the order the stages first reported."""
        return {s: (self._base_done.get(s, 0) + d, self._base_total.get(s, 0) + self._total[s])
                for s, d in self._done.items()}

    def postfix(self) -> str:
        return ", ".join(f"{STAGE_NAMES.get(s, s)} {d}/{t}" for s, (d, t) in self.stages().items())

    # ----------------------------------------------------------------- the callable

    def __call__(self, done: int, total: int, stage: str) -> None:
        done, total = int(done), int(total)
        if stage in self._done and done < self._done[stage]:  # a new round of this stage
            self._base_done[stage] = self._base_done.get(stage, 0) + self._done[stage]
            self._base_total[stage] = self._base_total.get(stage, 0) + self._total[stage]
        self._done[stage], self._total[stage] = done, max(total, done)
        self._draw()

    def start(self, desc: str = "") -> None:
        """A new image: counts back to zero, the bar (if drawn) reset and named ``desc``."""
        for d in (self._done, self._total, self._base_done, self._base_total):
            d.clear()
        self._desc = desc
        if self._bar is not None:
            self._bar.reset(total=0)
            self._bar.set_description_str(desc, refresh=False)
            self._bar.set_postfix_str("", refresh=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def _draw(self) -> None:
        if not self.enabled:
            return
        if self._bar is None:  # first report: only now is there something to show
            make = self._make_bar
            if make is None:
                from tqdm.auto import tqdm as make
            self._bar = make(total=0, desc=self._desc, unit="step", leave=self.leave,
                             position=self.position, file=self.file, dynamic_ncols=True)
        self._bar.total = self.total
        self._bar.n = self.done
        self._bar.set_postfix_str(self.postfix(), refresh=False)
        self._bar.refresh()
