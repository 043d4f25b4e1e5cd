"""A static dashboard over the results history: ``bench dashboard --out DIR``.

:mod:`harness.dashboard.site` gathers and writes the site, :mod:`harness.dashboard.charts`
draws the trend charts (matplotlib SVG, inlined); the page's styles and script are in
``assets/``. Self-contained: no server, no network at view time.
"""

from __future__ import annotations

from harness.dashboard.site import MARKER, Dashboard, build_site

__all__ = ["MARKER", "Dashboard", "build_site"]
