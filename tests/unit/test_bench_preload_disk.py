"""`--preload N` is refused up front when its estimate exceeds the database disk's free space."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bench import preload


def test_a_preload_bigger_than_the_free_disk_is_refused_with_the_estimate(
    tmp_path: Path,
) -> None:
    free = shutil.disk_usage(tmp_path).free
    too_many = int(free / preload.DISK_BYTES_PER_ROW) + 1_000_000
    with pytest.raises(preload.PreloadRefused, match=r"GB free under"):
        preload.check_disk(str(tmp_path), too_many)


def test_a_preload_that_fits_says_what_it_needs_and_what_is_free(tmp_path: Path) -> None:
    said = preload.check_disk(str(tmp_path), 1000)
    assert "1,000 rows each need about 0.0 GB" in said and "GB free" in said


def test_without_the_data_directory_here_the_disk_is_not_checked() -> None:
    assert "not checked" in preload.check_disk(None, 10**12)
