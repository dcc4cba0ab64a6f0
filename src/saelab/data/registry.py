"""The paper's bundled datasets: 113 binary sets and 8 OOD test sets, read from `sae-probes`' files.

saelab reads the data files shipped in the installed ``sae-probes`` wheel (``data/cleaned_data``,
``data/OOD data`` and ``data/probing_datasets_MASTER.csv.zst``) but never imports its modules: the
package folder is located with ``importlib.util.find_spec``, which does not execute the package.

Source: sae_probes_spec.md §1.1–§1.4 (files, families, MASTER csv, OOD data).
"""

from __future__ import annotations

import difflib
import functools
import importlib.util
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pandas as pd

from saelab.errors import DatasetError

logger = logging.getLogger(__name__)

MASTER_FILE = "probing_datasets_MASTER.csv.zst"
OOD_FOLDER = "OOD data"
OOD_SUFFIX = "_OOD"

#: Family of each binary dataset, keyed by the dataset's leading number (spec §1.2). An OOD set
#: belongs to the family of the in-distribution set with the same number (spec §1.4).
FAMILY_NUMBERS: dict[str, tuple[int, ...]] = {
    # Historical figures: 5 ismale, 6 isamerican, 7 ispolitician.
    "historical_figures": (5, 6, 7),
    # NYT headlines: istrump, isobama, ischina, isiran, isfrontpage.
    "headlines": (21, 22, 23, 24, 26),
    # QA / truth: sciq_tf, truthqa_tf, temp_sense, phys_tf, reasoning_tf, cs_tf.
    "qa_truth": (36, 41, 42, 44, 47, 54),
    # ETHICS: cm_correct, cm_isshort, deon_isvalid, just_is, virtue_is.
    "ethics": (48, 49, 50, 51, 52),
    # Wikidata people: sex_or_gender, is_alive, political_party, six occupation flags.
    "wikidata": tuple(range(56, 65)),
    # Bigram vs. not-bigram (high-school, living-room, ..., mental-health).
    "bigram": tuple(range(65, 86)),
    # GLUE: cola, mrpc, qnli, qqp, sst2 and the MNLI one-vs-rest sets 136-138.
    "glue": (87, 89, 90, 91, 92, 136, 137, 138),
    # Text classification: ai_gen, toxic, spam, fake news, click bait, hate x2, aimade, movie
    # sentiment, amazon 5-star.
    "text_classification": (94, 95, 96, 100, 105, 106, 107, 110, 113, 157),
    # One-vs-rest splits of multiclass tasks: 114-156 except the MNLI sets 136-138.
    "one_vs_rest": tuple(n for n in range(114, 157) if n not in (136, 137, 138)),
    # Code / "agnews" (161-163 in effect separate news from code, spec §1.1).
    "code": (158, 159, 160, 161, 162, 163),
}

FAMILY_OF_NUMBER: dict[int, str] = {n: fam for fam, nums in FAMILY_NUMBERS.items() for n in nums}

_NUMBER_RE = re.compile(r"^(\d+)_(.+)$")


@dataclass(frozen=True)
class DatasetInfo:
    """One bundled dataset file.

    Attributes:
        name: numbered tag, e.g. ``"92_glue_sst2"``; OOD sets end in ``"_OOD"``
            (``"87_glue_cola_OOD"``).
        family: one of ``FAMILY_NUMBERS`` (spec §1.2).
        path: the zstd-compressed CSV file.
        kind: ``"binary"`` for the 113 training datasets, ``"ood"`` for the 8 test-only sets.
        ood_of: for an OOD set, the name of its in-distribution dataset; otherwise ``None``.
    """

    name: str
    family: str
    path: Path
    kind: Literal["binary", "ood"]
    ood_of: str | None = None

    @property
    def number(self) -> int:
        """The leading number of the name (``92`` for ``"92_glue_sst2"``)."""
        return int(self.name.split("_", 1)[0])

    @property
    def tag(self) -> str:
        """The name without its leading number (``"glue_sst2"``), as in the MASTER csv."""
        return self.name.split("_", 1)[1]


def bundled_data_dir() -> Path:
    """The ``data/`` folder of the installed ``sae-probes`` package (the package is not imported)."""
    spec = importlib.util.find_spec("sae_probes")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise DatasetError(
            "the bundled datasets come from the 'sae-probes' package, which is not installed; "
            "install it with `pip install sae-probes` or pass a path to a CSV/Parquet file"
        )
    data_dir = Path(locations[0]) / "data"
    if not (data_dir / MASTER_FILE).is_file():
        raise DatasetError(
            f"{data_dir}: expected the sae-probes data folder with {MASTER_FILE}; "
            "the installed sae-probes package looks incomplete (reinstall it)"
        )
    return data_dir


def _number_of(name: str) -> int:
    match = _NUMBER_RE.match(name)
    if match is None:
        raise DatasetError(f"bundled dataset name {name!r} does not start with '<number>_'")
    return int(match.group(1))


@functools.lru_cache(maxsize=4)
def _registry(data_dir: Path) -> tuple[DatasetInfo, ...]:
    """All bundled datasets under ``data_dir``: binary sets by number, then OOD sets by number.

    Binary sets are the MASTER rows with ``Data type == "Binary Classification"``; the file is
    ``data_dir / (Dataset save name + ".zst")`` and the name is its stem (spec §1.3).
    """
    master_path = data_dir / MASTER_FILE
    try:
        master = pd.read_csv(master_path, compression="zstd", dtype=str, keep_default_na=False)
    except Exception as exc:  # a damaged install: zstd, CSV or IO errors all land here
        raise DatasetError(f"{master_path}: cannot read the MASTER csv ({exc})") from exc
    for column in ("Data type", "Dataset save name"):
        if column not in master.columns:
            raise DatasetError(
                f"{master_path}: expected a column {column!r}; found {list(master.columns)}"
            )
    binary_rows = master[master["Data type"] == "Binary Classification"]

    binary: list[DatasetInfo] = []
    for save_name in binary_rows["Dataset save name"]:
        stem = save_name.split("/")[-1].removesuffix(".csv")
        number = _number_of(stem)
        if number not in FAMILY_OF_NUMBER:
            raise DatasetError(
                f"{master_path}: dataset {stem!r} has no family in saelab.data.registry."
                "FAMILY_NUMBERS; add its number to the right family"
            )
        path = data_dir / (save_name + ".zst")
        binary.append(DatasetInfo(stem, FAMILY_OF_NUMBER[number], path, "binary", None))
    binary.sort(key=lambda info: info.number)

    by_name = {info.name: info for info in binary}
    ood: list[DatasetInfo] = []
    ood_dir = data_dir / OOD_FOLDER
    if ood_dir.is_dir():
        for entry in os.listdir(ood_dir):
            # Only "<id name>_OOD.csv.zst" files are datasets; e.g. the 15-row
            # "66_living-room_translations.csv.zst" (columns Language, Translation) is not (§1.4).
            if not entry.endswith(OOD_SUFFIX + ".csv.zst"):
                continue
            name = entry.removesuffix(".csv.zst")
            id_name = name.removesuffix(OOD_SUFFIX)
            if id_name not in by_name:
                logger.warning(
                    "%s: no in-distribution dataset %r; skipped", ood_dir / entry, id_name
                )
                continue
            family = by_name[id_name].family
            ood.append(DatasetInfo(name, family, ood_dir / entry, "ood", id_name))
    ood.sort(key=lambda info: info.number)
    return tuple(binary) + tuple(ood)


def list_bundled(include_ood: bool = False) -> list[DatasetInfo]:
    """The 113 binary datasets sorted by leading number, plus the 8 OOD sets when asked.

    Source: spec §1.3 (binary = MASTER rows with ``Data type == "Binary Classification"``) and §1.4.
    """
    infos = _registry(bundled_data_dir())
    return [info for info in infos if include_ood or info.kind == "binary"]


def find_bundled(name: str) -> DatasetInfo:
    """Look up a bundled dataset by its numbered name (``"92_glue_sst2"``, ``"87_glue_cola_OOD"``).

    Also accepted when unambiguous: the name without its number (``"glue_sst2"``), a bare number
    (``"92"``, binary sets only) and any of these in another letter case.
    """
    infos = list_bundled(include_ood=True)
    wanted = name.strip()
    for exact in (True, False):
        key = wanted if exact else wanted.lower()
        matches = []
        for info in infos:
            candidates = (info.name, info.tag)
            if not exact:
                candidates = tuple(c.lower() for c in candidates)
            if key in candidates:
                matches.append(info)
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise DatasetError(
                f"dataset name {name!r} is ambiguous: it matches "
                f"{', '.join(m.name for m in matches)}; use the numbered name"
            )
    if wanted.isdigit():
        for info in infos:
            if info.kind == "binary" and info.number == int(wanted):
                return info
    names = [info.name for info in infos]
    close = difflib.get_close_matches(wanted, names + [info.tag for info in infos], n=5)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise DatasetError(
        f"unknown bundled dataset {name!r}{hint} "
        "(`saelab datasets` lists all; a file path needs a .csv, .csv.zst or .parquet suffix)"
    )


def count_rows(info: DatasetInfo) -> int:
    """Number of data rows in a bundled dataset file (CSV records, so multi-line prompts count once).

    Cached by file path, size and modification time; all 113 files take under two seconds.
    """
    from saelab.data.datasets import count_file_rows  # datasets imports this module

    return count_file_rows(info.path)
