"""Demo data for the local stand-in of the `classicmodels` source: the tables and column names of the MySQL
sample database the recommender lab uses (productlines, products, customers) plus its `ratings` table.

Sizes follow the real database (7 product lines, 110 products, 122 customers of whom about 98 rate about
26 products each). Ratings carry structure a content-based model can learn: customers in some regions
prefer some product lines, and wealthier customers (higher credit limit) rate expensive models higher.
Seeded and deterministic.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import sqlalchemy as sa

metadata = sa.MetaData()

productlines = sa.Table(
    "productlines", metadata,
    sa.Column("productLine", sa.String(50), primary_key=True),
    sa.Column("textDescription", sa.String(4000)),
    sa.Column("htmlDescription", sa.Text),
    sa.Column("image", sa.LargeBinary),
)
products = sa.Table(
    "products", metadata,
    sa.Column("productCode", sa.String(15), primary_key=True),
    sa.Column("productName", sa.String(70), nullable=False),
    sa.Column("productLine", sa.String(50), sa.ForeignKey("productlines.productLine"), nullable=False),
    sa.Column("productScale", sa.String(10), nullable=False),
    sa.Column("productVendor", sa.String(50), nullable=False),
    sa.Column("productDescription", sa.Text, nullable=False),
    sa.Column("quantityInStock", sa.SmallInteger, nullable=False),
    sa.Column("buyPrice", sa.Numeric(10, 2), nullable=False),
    sa.Column("MSRP", sa.Numeric(10, 2), nullable=False),
)
customers = sa.Table(
    "customers", metadata,
    sa.Column("customerNumber", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("customerName", sa.String(50), nullable=False),
    sa.Column("contactLastName", sa.String(50), nullable=False),
    sa.Column("contactFirstName", sa.String(50), nullable=False),
    sa.Column("phone", sa.String(50), nullable=False),
    sa.Column("addressLine1", sa.String(50), nullable=False),
    sa.Column("addressLine2", sa.String(50)),
    sa.Column("city", sa.String(50), nullable=False),
    sa.Column("state", sa.String(50)),
    sa.Column("postalCode", sa.String(15)),
    sa.Column("country", sa.String(50), nullable=False),
    sa.Column("salesRepEmployeeNumber", sa.Integer),
    sa.Column("creditLimit", sa.Numeric(10, 2)),
)
ratings = sa.Table(
    "ratings", metadata,
    sa.Column("customerNumber", sa.Integer, nullable=False),
    sa.Column("productCode", sa.String(15), nullable=False),
    sa.Column("productRating", sa.Integer, nullable=False),
)

PRODUCT_LINES = ["Classic Cars", "Vintage Cars", "Motorcycles", "Planes", "Trucks and Buses", "Ships", "Trains"]
LINE_WEIGHTS = [0.34, 0.22, 0.12, 0.11, 0.10, 0.08, 0.03]
SCALES = ["1:18", "1:24", "1:700", "1:12", "1:32", "1:10", "1:72", "1:50"]
SCALE_WEIGHTS = [0.38, 0.23, 0.09, 0.08, 0.07, 0.06, 0.05, 0.04]
VENDORS = ["Min Lin Diecast", "Classic Metal Creations", "Highway 66 Mini Classics", "Red Start Diecast",
           "Motor City Art Classics", "Second Gear Diecast", "Autoart Studio Design", "Welly Diecast Productions",
           "Unimax Art Galleries", "Studio M Art Models", "Exoto Designs", "Gearbox Collectibles", "Carousel DieCast Legends"]
# (city, state, postal code, country, region)
PLACES = [
    ("NYC", "NY", "10022", "USA", 0), ("San Francisco", "CA", "94217", "USA", 0), ("Boston", "MA", "51247", "USA", 0),
    ("Los Angeles", "CA", "91003", "USA", 0), ("Philadelphia", "PA", "71270", "USA", 0), ("Las Vegas", "NV", "83030", "USA", 0),
    ("Paris", None, "75016", "France", 1), ("Nantes", None, "44000", "France", 1), ("Lyon", None, "69004", "France", 1),
    ("Madrid", None, "28034", "Spain", 1), ("Barcelona", None, "08022", "Spain", 1), ("Torino", None, "10100", "Italy", 1),
    ("London", None, "WA1 1DP", "UK", 2), ("Manchester", None, "EC2 5NT", "UK", 2), ("Frankfurt", None, "60528", "Germany", 2),
    ("Helsinki", None, "FIN-00180", "Finland", 2), ("Oslo", None, "N 0106", "Norway", 2), ("Stockholm", None, "S-844 67", "Sweden", 2),
    ("Melbourne", "Victoria", "3004", "Australia", 3), ("Sydney", "NSW", "2067", "Australia", 3),
    ("Auckland", None, "1010", "New Zealand", 3), ("Singapore", None, "079903", "Singapore", 3),
    ("Tokyo", "Tokyo", "106-0032", "Japan", 3), ("Montréal", "Québec", "H1J 1C3", "Canada", 0),
]
FIRST_NAMES = ["Carine", "Jean", "Peter", "Janine", "Jonas", "Susan", "Roland", "Julie", "Mory", "Jytte", "Kwai",
               "Diego", "Christina", "Pascale", "Rachel", "Wing", "Elizabeth", "Yoshi", "Maria", "Martine"]
LAST_NAMES = ["Schmitt", "King", "Ferguson", "Labrune", "Bergulfsen", "Nelson", "Piestrzeniewicz", "Murphy", "Lee",
              "Freyre", "Berglund", "Petersen", "Saveley", "Natividad", "Young", "Leong", "Hashimoto", "Pipps"]
COMPANY_WORDS = ["Mini", "Gifts", "Collectables", "Diecast", "Classics", "Models", "Replicas", "Souvenirs", "Toys", "Auto"]
# preference of each region (rows) for each product line (columns), in rating points
REGION_TASTE = np.array([
    [0.9, 0.2, 0.6, -0.3, 0.5, -0.6, -0.2],
    [0.1, 0.9, -0.2, 0.4, -0.5, 0.3, 0.6],
    [-0.4, 0.3, 0.8, 0.6, 0.2, 0.5, -0.3],
    [0.2, -0.5, 0.1, 0.7, 0.6, 0.8, 0.4],
])


def generate(seed: int = 7, n_products: int = 110, n_customers: int = 122, raters: int = 98,
             ratings_per_rater: int = 26) -> dict[str, pd.DataFrame]:
    """The four tables as DataFrames, column names exactly as in classicmodels."""
    rng = np.random.default_rng(seed)
    lines = pd.DataFrame({
        "productLine": PRODUCT_LINES,
        "textDescription": [f"{line} from the workshop's collection, built to scale." for line in PRODUCT_LINES],
        "htmlDescription": [None] * len(PRODUCT_LINES),
        "image": [None] * len(PRODUCT_LINES),
    })
    line = rng.choice(PRODUCT_LINES, size=n_products, p=LINE_WEIGHTS)
    scale = rng.choice(SCALES, size=n_products, p=SCALE_WEIGHTS)
    numbers = rng.choice(np.arange(1000, 4000), size=n_products, replace=False)
    codes = [f"S{s.split(':')[1]}_{n}" for s, n in zip(scale, numbers)]
    buy = np.round(rng.uniform(15, 105, n_products), 2)
    products_frame = pd.DataFrame({
        "productCode": codes,
        "productName": [f"{1930 + int(rng.integers(0, 75))} {ln[:-1] if ln.endswith('s') else ln} No. {i + 1}"
                        for i, ln in enumerate(line)],
        "productLine": line,
        "productScale": scale,
        "productVendor": rng.choice(VENDORS, size=n_products),
        "productDescription": [f"Detailed {s} replica in the {ln} line." for s, ln in zip(scale, line)],
        "quantityInStock": rng.integers(0, 10_000, n_products),
        "buyPrice": buy,
        "MSRP": np.round(buy * rng.uniform(1.4, 2.0, n_products), 2),
    })
    places = [PLACES[i] for i in rng.integers(0, len(PLACES), n_customers)]
    customer_numbers = 103 + np.cumsum(rng.integers(1, 8, n_customers)) - 1
    credit = np.where(rng.random(n_customers) < 0.2, 0.0, np.round(rng.uniform(20_000, 230_000, n_customers), -2))
    customers_frame = pd.DataFrame({
        "customerNumber": customer_numbers,
        "customerName": [f"{rng.choice(COMPANY_WORDS)} {rng.choice(COMPANY_WORDS)} Co." for _ in range(n_customers)],
        "contactLastName": rng.choice(LAST_NAMES, n_customers),
        "contactFirstName": rng.choice(FIRST_NAMES, n_customers),
        "phone": [f"+1 555 {rng.integers(1000, 9999)}" for _ in range(n_customers)],
        "addressLine1": [f"{rng.integers(1, 999)} Harbour Street" for _ in range(n_customers)],
        "addressLine2": [None] * n_customers,
        "city": [p[0] for p in places],
        "state": [p[1] for p in places],
        "postalCode": [p[2] for p in places],
        "country": [p[3] for p in places],
        "salesRepEmployeeNumber": rng.choice([1165, 1166, 1188, 1216, 1286, 1323, 1370, 1401, 1501, 1504, 1611, 1612],
                                             n_customers),
        "creditLimit": credit,
    })
    return {
        "productlines": lines,
        "products": products_frame,
        "customers": customers_frame,
        "ratings": generate_ratings(customers_frame.iloc[rng.permutation(n_customers)[:raters]], products_frame,
                                    ratings_per_rater, rng),
    }


def generate_ratings(raters: pd.DataFrame, products_frame: pd.DataFrame, per_rater: int,
                     rng: np.random.Generator) -> pd.DataFrame:
    """1-5 ratings by each rater for `per_rater` distinct products, with learnable structure."""
    region_of = {p[3]: p[4] for p in PLACES}
    region = np.array([region_of.get(country, 0) for country in raters["country"]], dtype=np.int64)
    line_index = products_frame["productLine"].map({ln: i for i, ln in enumerate(PRODUCT_LINES)}).to_numpy()
    price = products_frame["MSRP"].to_numpy(dtype=float)
    price_z = (price - price.mean()) / (price.std() or 1.0)
    credit = raters["creditLimit"].to_numpy(dtype=float)
    credit_z = (credit - credit.mean()) / (credit.std() or 1.0)
    n_products = len(products_frame)
    per_rater = min(per_rater, n_products)
    picks = np.argsort(rng.random((len(raters), n_products)), axis=1)[:, :per_rater]
    taste = REGION_TASTE[region[:, None], line_index[picks]]
    signal = 3.0 + 1.3 * taste + 0.5 * credit_z[:, None] * price_z[picks]
    rating = np.clip(np.rint(signal + rng.normal(0, 0.7, picks.shape)), 1, 5).astype(int)
    return pd.DataFrame({
        "customerNumber": np.repeat(raters["customerNumber"].to_numpy(), per_rater),
        "productCode": products_frame["productCode"].to_numpy()[picks].ravel(),
        "productRating": rating.ravel(),
    })


def _replace_tables(conn: sa.Connection, tables: dict[str, pd.DataFrame]) -> None:
    metadata.drop_all(conn)
    metadata.create_all(conn)
    for name in ("productlines", "products", "customers", "ratings"):
        frame = tables[name]
        conn.execute(metadata.tables[name].insert(), frame.astype(object).where(frame.notna(), None).to_dict("records"))


_SEED_LOCK_KEY = 0x6D6C6470  # an advisory lock id of this project's own


def ensure_loaded(engine: sa.Engine, seed: int = 7) -> bool:
    """Load the demo tables unless a ratings table is already there; True when it loaded them.

    Several run workers may start at once: an advisory lock makes one of them load while the others wait
    and then find the tables.
    """
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SEED_LOCK_KEY})
        if sa.inspect(conn).has_table("ratings"):
            return False
        _replace_tables(conn, generate(seed))
    return True
