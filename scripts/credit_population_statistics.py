"""Print the generated credit population's STATISTICS, derived from the real bank file, to paste into
credit_assets/population.py (the generator itself never reads the file: users do not have it).

    .venv/bin/python scripts/credit_population_statistics.py ../shared/datasets/credit/BankCaseStudyData.csv
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from credit_assets import population  # noqa: E402

if __name__ == "__main__":
    sys.exit(population.main())
