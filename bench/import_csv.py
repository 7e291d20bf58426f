#!/usr/bin/env python3
"""Writes a CSV of N financing needs for `finmatch import` (the columns of examples/needs-sample.csv)
to stdout: one enterprise per seven rows, one need per purpose (an enterprise may hold one open
need per purpose), valid GB 32100 credit codes, Hubei regions, varied amounts, terms and collateral.

    python3 bench/import_csv.py 1000000 > needs.csv
"""

import datetime
import random
import sys

CHARSET = "0123456789ABCDEFGHJKLMNPQRTUWXY"
WEIGHTS = [1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28]
REGIONS = ["420102", "420111", "420281", "420381", "420502", "420602", "420802", "420902",
           "421002", "421102", "421202", "421303", "421381", "422801"]
INDUSTRIES = ["C1311", "C1761", "C2720", "C2770", "C3360", "C3670", "F5137", "I6510", "A0111"]
SIZES = ["micro", "small", "small", "medium", "large"]
PURPOSES = ["working_capital", "payroll", "raw_materials", "equipment", "expansion",
            "conversion", "refinancing"]
COLLATERAL = ["credit", "guarantee", "real_estate", "equipment", "receivables", "ip_pledge", "inventory"]


def credit_code(first17):
    total = sum(CHARSET.index(c) * w for c, w in zip(first17, WEIGHTS))
    return first17 + CHARSET[(31 - total % 31) % 31]


def main():
    rows = int(sys.argv[1])
    rng = random.Random(20200301)
    needed_by = (datetime.date.today() + datetime.timedelta(days=300)).isoformat()
    out = sys.stdout
    out.write("credit_code,enterprise_name,region_code,industry_code,size,amount_yuan,term_months,"
              "purpose,collateral,max_rate_bps,needed_by,consent\n")
    for i in range(rows):
        e = i // len(PURPOSES)
        region = REGIONS[e % len(REGIONS)]
        code = credit_code(f"91{region}M{e:08d}")
        amount = rng.choice([200_000, 500_000, 1_000_000, 3_000_000, 8_000_000, 20_000_000])
        collateral = ";".join(rng.sample(COLLATERAL, rng.randint(1, 2)))
        rate = rng.choice(["", "450", "520", "600"])
        out.write(f"{code},Import enterprise {e},{region},{INDUSTRIES[e % len(INDUSTRIES)]},"
                  f"{SIZES[e % len(SIZES)]},{amount},{rng.choice([6, 12, 24, 36])},"
                  f"{PURPOSES[i % len(PURPOSES)]},{collateral},{rate},{needed_by},yes\n")


if __name__ == "__main__":
    main()
