"""The real public reference data sets that may sit beside the project (`DATASETS_DIR`).

In development and CI they are at `../shared/datasets`; a user's fresh machine has none of them, and every
consumer falls back to generated demo data. The files are read in place, never copied into the project.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg


class ReferenceDatasets(dg.ConfigurableResource):
    """Where the reference data sets live, if anywhere."""

    root: str

    def path(self, relative: str) -> Path | None:
        """The file's path when it exists, else None."""
        candidate = Path(self.root).expanduser() / relative
        return candidate if candidate.is_file() else None

    def credit_applications(self) -> Path | None:
        """The bank credit case-study data set (`credit/BankCaseStudyData.csv`)."""
        return self.path("credit/BankCaseStudyData.csv")
