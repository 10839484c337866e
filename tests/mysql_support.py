"""Loading the real classicmodels dump and the lab's ratings table into MariaDB for the tests. (The connection
to the server, `mysql_connection`, is `benchmarks.harness`'s, shared with the benchmarks.)"""

import re
from pathlib import Path

import pandas as pd


def load_dump(conn, dump: Path, database: str) -> None:
    """Run mysqlsampledatabase.sql, creating its tables in `database` instead of `classicmodels`."""
    script = dump.read_text(encoding="utf-8")
    script = re.sub(r"`classicmodels`", f"`{database}`", script)
    with conn.cursor() as cur:
        cur.execute(script)
        while cur.nextset():
            pass


def create_ratings_table(conn, ratings_csv: Path) -> int:
    """`ratings (customerNumber, productCode, productRating)` rebuilt from the lab's training CSV."""
    frame = pd.read_csv(ratings_csv, usecols=["customernumber", "productcode", "productrating"])
    with conn.cursor() as cur:
        cur.execute("DROP TABLE IF EXISTS ratings")
        cur.execute("CREATE TABLE ratings (customerNumber int NOT NULL, productCode varchar(15) NOT NULL, "
                    "productRating int NOT NULL)")
        cur.executemany("INSERT INTO ratings VALUES (%s, %s, %s)",
                        [tuple(map(lambda v: v.item() if hasattr(v, "item") else v, row))
                         for row in frame[["customernumber", "productcode", "productrating"]].itertuples(index=False)])
    return len(frame)
