"""``leadpulse inspect``: which column of an export is what, on the shapes real exports have."""

from __future__ import annotations

import random
from datetime import datetime, timedelta

import pytest

from features.inspect import command, profile, suggest


def _rows(n: int, make) -> list[dict[str, str]]:
    rng = random.Random(7)
    return [make(i, rng) for i in range(n)]


def _when(i: int, rng: random.Random, fmt: str = "%Y-%m-%d %H:%M:%S") -> str:
    return (datetime(2021, 1, 1) + timedelta(minutes=37 * i + rng.randint(0, 30))).strftime(fmt)


SHAPES = {
    "online retail (line items)": (
        lambda i, r: {"InvoiceNo": str(536365 + i // 4), "StockCode": f"85{r.randint(100, 999)}B",
                      "Description": "WHITE HANGING HEART", "Quantity": str(r.randint(1, 24)),
                      "InvoiceDate": _when(i // 4, r, "%m/%d/%Y %H:%M"), "UnitPrice": r.choice(["2.55", "3.39", "0.85"]),
                      "CustomerID": f"{r.randint(12346, 12600)}.0", "Country": "United Kingdom"},
        {"customer": "CustomerID", "time": "InvoiceDate", "order": "InvoiceNo", "price": "UnitPrice",
         "quantity": "Quantity", "product": "StockCode"},
    ),
    "retailrocket (event log)": (
        lambda i, r: {"timestamp": str(1_433_221_332_117 + 60_000 * i), "visitorid": str(r.randint(1, 400)),
                      "event": r.choice(["view"] * 8 + ["addtocart", "transaction"]), "itemid": str(r.randint(1, 9000)),
                      "transactionid": str(r.randint(1, 500)) if r.random() < 0.1 else ""},
        {"customer": "visitorid", "time": "timestamp", "action": "event", "product": "itemid", "order": "transactionid"},
    ),
    "mailing activity": (
        lambda i, r: {"Email": f"person{r.randint(1, 300)}@example.com", "Campaign": f"spring-{r.randint(1, 9)}",
                      "Action": r.choice(["sent", "sent", "opened", "clicked"]), "Timestamp": _when(i, r)},
        {"customer": "Email", "time": "Timestamp", "action": "Action", "campaign": "Campaign"},
    ),
    "shop orders": (
        lambda i, r: {"order_id": f"#{1000 + i}", "customer_id": f"cus_{r.randint(1, 250)}", "created_at": _when(i, r),
                      "total": f"{r.randint(500, 25000) / 100:.2f}", "currency": r.choice(["EUR", "EUR", "CHF"]),
                      "status": r.choice(["paid", "paid", "refunded", "pending"])},
        {"customer": "customer_id", "time": "created_at", "order": "order_id", "amount": "total",
         "currency": "currency", "status": "status"},
    ),
    # Month first over a whole year: most days are above 12, so most cells read month/day/year only.
    "a US shop export (12-hour clock)": (
        lambda i, r: {"Order ID": str(1000 + i), "Customer Email": f"buyer{r.randint(1, 300)}@example.com",
                      "Order Date": (datetime(2020, 1, 1) + timedelta(hours=4 * i + r.randint(0, 3)))
                      .strftime("%m/%d/%Y %I:%M %p"),
                      "Total": r.choice(["$1,922.33", "$49.00", "($39.00)"]), "Status": r.choice(["Completed", "Refunded"])},
        {"customer": "Customer Email", "time": "Order Date", "order": "Order ID", "amount": "Total", "status": "Status"},
    ),
    # Order fields on an order's first line only; a fulfilment status that never changes; a
    # discount column whose name holds "count"; "#1001" order names.
    "Shopify orders export": (
        lambda i, r: {"Name": f"#{1001 + i // 2}", "Email": f"user{r.randint(1, 300)}@example.com",
                      "Financial Status": r.choice(["paid"] * 8 + ["refunded", "pending"]) if i % 2 == 0 else "",
                      "Paid at": _when(i, r, "%Y-%m-%d %H:%M:%S -0500") if i % 2 == 0 else "",
                      "Fulfillment Status": "fulfilled" if i % 2 == 0 else "",
                      "Currency": "USD" if i % 2 == 0 else "", "Total": f"{r.randint(500, 25000) / 100:.2f}"
                      if i % 2 == 0 else "", "Discount Amount": "0.00" if i % 2 == 0 else "",
                      "Lineitem quantity": str(r.randint(1, 3)), "Lineitem price": f"{r.randint(500, 9000) / 100:.2f}"},
        {"customer": "Email", "time": "Paid at", "order": "Name", "status": "Financial Status",
         "quantity": "Lineitem quantity", "price": "Lineitem price", "amount": "Total", "currency": "Currency"},
    ),
    # A constant description that reads as an action word, lower-case currencies, fees beside the amount.
    "Stripe charges": (
        lambda i, r: {"id": f"ch_{i:024d}", "Description": "Order", "Created (UTC)": _when(i, r, "%Y-%m-%d %H:%M"),
                      "Amount": f"{r.randint(500, 25000) / 100:.2f}", "Amount Refunded": r.choice(["0.00"] * 9 + ["12.00"]),
                      "Currency": "usd", "Fee": f"{r.randint(30, 900) / 100:.2f}",
                      "Status": r.choice(["Paid"] * 8 + ["Failed", "Refunded"]),
                      "Customer ID": f"cus_{r.randint(1, 300):014d}", "Customer Email": f"b{r.randint(1, 300)}@example.com"},
        {"customer": "Customer ID", "time": "Created (UTC)", "amount": "Amount", "currency": "Currency",
         "status": "Status", "action": None},
    ),
    # Ten-digit customer numbers read as epoch seconds too.
    "ten-digit customer ids": (
        lambda i, r: {"Customer ID": str(1_600_000_000 + r.randint(1, 150) * 7919), "Order Date": _when(i, r),
                      "Order Total": f"{r.randint(500, 25000) / 100:.2f}"},
        {"customer": "Customer ID", "time": "Order Date", "amount": "Order Total"},
    ),
    "Klaviyo activity": (
        lambda i, r: {"Email": f"p{r.randint(1, 150)}@example.com", "Campaign ID": f"c{r.randint(1, 4)}",
                      "Event": r.choice(["Received Email", "Opened Email", "Clicked Email", "Bounced Email",
                                         "Unsubscribed", "Marked Email as Spam"]), "Timestamp": _when(i, r)},
        {"customer": "Email", "time": "Timestamp", "action": "Event", "campaign": "Campaign ID"},
    ),
    # Page names for actions: each row is a page view (--others page_view), not a purchase of its price.
    "a clickstream naming its pages": (
        lambda i, r: {"session": f"s{r.randint(1, 500)}", "visitor": f"v{r.randint(1, 200)}", "ts": _when(i, r),
                      "page": r.choice(["home", "catalog", "product/12", "cart", "checkout_step_2", "thank_you"]),
                      "price": f"{r.uniform(1, 90):.2f}"},
        {"customer": "visitor", "time": "ts", "action": "page", "others": "page_view", "session": "session"},
    ),
    # The structured-event action is filled on a fifth of the rows; the event column on all of them.
    "Snowplow": (
        lambda i, r: {"collector_tstamp": _when(i, r), "user_id": f"u{r.randint(1, 300)}",
                      "event": (e := r.choice(["page_view", "transaction", "struct", "page_ping"])),
                      "se_action": r.choice(["add-to-basket", "view"]) if e == "struct" else "",
                      "page_url": f"https://shop.example/p?email=u{r.randint(1, 9)}@example.com",
                      "domain_sessionid": f"{r.randint(1, 900):08x}"},
        {"customer": "user_id", "time": "collector_tstamp", "action": "event"},
    ),
    # Date cells exported as Excel's serial numbers.
    "an ERP ledger with serial dates": (
        lambda i, r: {"Customer No.": f"C{r.randint(1, 200):05d}", "Posting Date": str(44_927 + i // 9),
                      "Document No.": f"INV{i}", "Amount": f"{r.randint(100, 90_000) / 100:.2f}"},
        {"customer": "Customer No.", "time": "Posting Date", "time_format": "excel", "amount": "Amount"},
    ),
    # A till keeps the day and the time of day apart.
    "a POS export (date and time apart)": (
        lambda i, r: {"Kundennummer": str(r.randint(1000, 1300)), "Datum": _when(i, r, "%d.%m.%Y"),
                      "Uhrzeit": f"{r.randint(8, 19):02d}:{r.randint(0, 59):02d}:{r.randint(0, 59):02d}",
                      "Umsatz": f"{r.randint(100, 9999) / 100:.2f}".replace(".", ",")},
        {"customer": "Kundennummer", "time": "Datum", "clock": "Uhrzeit", "amount": "Umsatz"},
    ),
    # A B2B CRM: the organisation is the customer, not the deal's title; "Org 19" is no number.
    "Pipedrive deals": (
        lambda i, r: {"Deal - Title": f"Deal {r.randint(1, 900)}", "Deal - Organization": f"Org {r.randint(1, 60)}",
                      "Deal - Value": str(r.randint(500, 90_000)), "Deal - Currency": "EUR",
                      "Deal - Status": r.choice(["won", "won", "lost", "open"]), "Deal - Won time": _when(i, r)},
        {"customer": "Deal - Organization", "time": "Deal - Won time", "amount": "Deal - Value",
         "status": "Deal - Status", "currency": "Deal - Currency"},
    ),
    "a German ERP export": (
        lambda i, r: {"Kundennummer": str(r.randint(10000, 10300)), "Rechnungsdatum": _when(i, r, "%d.%m.%Y"),
                      "Belegnummer": str(4711 + i), "Betrag": f"{r.randint(100, 99999) / 100:.2f}".replace(".", ",")},
        {"customer": "Kundennummer", "time": "Rechnungsdatum", "amount": "Betrag"},
    ),
    "GA4 BigQuery export (flattened)": (
        lambda i, r: {"event_date": "20230405", "event_timestamp": str(1_680_700_930_123_456 + 7_000_000 * i),
                      "event_name": r.choice(["page_view"] * 6 + ["session_start", "view_item", "purchase"]),
                      "event_params.ga_session_id": str(1_680_700_000 + r.randint(1, 900)),
                      "user_pseudo_id": f"{(n := r.randint(1, 400)) * 7919}.{1_680_000_000 + n}",
                      "ecommerce.transaction_id": f"T{i}" if i % 9 == 0 else "",
                      "ecommerce.purchase_revenue": f"{r.uniform(5, 200):.2f}" if i % 9 == 0 else ""},
        {"customer": "user_pseudo_id", "time": "event_timestamp", "action": "event_name",
         "session": "event_params.ga_session_id", "order": "ecommerce.transaction_id",
         "amount": "ecommerce.purchase_revenue"},
    ),
    "dunnhumby (day numbers)": (
        lambda i, r: {"household_key": str(r.randint(1, 2500)), "BASKET_ID": str(26984851472 + i // 3),
                      "DAY": str(1 + i // 5), "PRODUCT_ID": str(r.randint(25671, 18316298)),
                      "QUANTITY": str(r.randint(1, 3)), "SALES_VALUE": f"{r.randint(50, 900) / 100:.2f}",
                      "TRANS_TIME": f"{r.randint(0, 23)}{r.randint(0, 59):02d}", "WEEK_NO": str(1 + i // 35)},
        {"customer": "household_key", "day_number": "DAY", "clock": "TRANS_TIME", "order": "BASKET_ID",
         "amount": "SALES_VALUE", "quantity": "QUANTITY", "product": "PRODUCT_ID"},
    ),
}


def test_day_numbers_become_a_time_format_the_user_completes() -> None:
    make, _ = SHAPES["dunnhumby (day numbers)"]
    line = command("transaction_data.csv", suggest(profile(_rows(2_000, make))), event_log=False)
    assert "--time DAY --clock TRANS_TIME" in line and line.endswith("--time-format days:START --out transaction_data.jsonl")


@pytest.mark.parametrize("shape", list(SHAPES))
def test_the_columns_each_role_needs_are_found(shape: str) -> None:
    make, expected = SHAPES[shape]
    pick = suggest(profile(_rows(2_000, make)))
    assert {role: pick.get(role) for role in expected} == expected
    line = command("export.csv", pick, event_log="action" in pick)
    assert line.startswith("leadpulse import-events" if expected.get("action") else "leadpulse import-transactions")


def test_no_cell_value_is_shown_but_status_action_and_currency_words() -> None:
    make, _ = SHAPES["shop orders"]
    shown = " ".join(p.describe() for p in profile(_rows(500, make)))
    assert "paid (" in shown and "EUR (" in shown
    assert "cus_" not in shown and "#10" not in shown and "2021-" not in shown
    mail, _ = SHAPES["mailing activity"]
    shown = " ".join(p.describe() for p in profile(_rows(500, mail)))
    assert "example.com" not in shown and "spring-" not in shown and "opened (" in shown
    assert "100% e-mail addresses" in shown


def test_fill_rates_count_the_rows_a_json_key_is_missing_from() -> None:
    rows = [{"userId": f"u{i % 9}", "anonymousId": f"a{i}"} if i % 10 < 7 else {"anonymousId": f"a{i}"}
            for i in range(100)]
    user = next(p for p in profile(rows) if p.name == "userId")
    assert user.describe().startswith("70% filled")


def test_a_url_that_carries_an_address_is_not_an_address() -> None:
    rows = [{"page_url": f"https://shop.example/?email=u{i}@example.com", "mail": f"u{i}@example.com"} for i in range(50)]
    url, mail = profile(rows)
    assert "e-mail" not in url.describe() and "100% e-mail addresses" in mail.describe()


def test_a_table_without_a_timeline_gets_no_time_column() -> None:
    """Instacart's orders: an hour of the day, a weekday, and days since the customer's last order."""
    rows = _rows(2_000, lambda i, r: {"order_id": str(i), "user_id": str(r.randint(1, 200)),
                                      "order_number": str(r.randint(1, 40)), "order_dow": str(r.randint(0, 6)),
                                      "order_hour_of_day": str(r.randint(6, 22)),
                                      "days_since_prior_order": str(r.randint(0, 30))})
    pick = suggest(profile(rows))
    assert "time" not in pick and "day_number" not in pick


def test_an_order_lines_table_offers_no_product_or_seller_as_the_customer() -> None:
    """Olist's order items: order, product and seller ids, and no customer (it is in the orders' table)."""
    rows = _rows(2_000, lambda i, r: {"order_id": f"o{i // 2}", "order_item_id": str(1 + i % 2),
                                      "product_id": f"p{r.randint(1, 300)}", "seller_id": f"s{r.randint(1, 80)}",
                                      "shipping_limit_date": _when(i, r), "price": f"{r.uniform(5, 200):.2f}"})
    pick = suggest(profile(rows))
    assert "customer" not in pick and pick["order"] == "order_id"


def _wholesale(i: int, r: random.Random) -> dict[str, str]:
    """A B2B export sorted by account: the first rows hold a handful of accounts, each with many lines."""
    return {"Invoice": f"INV{100_000 + i // 4}", "Date": _when(i // 4, r, "%d.%m.%Y"), "Account": f"ACCT-{1 + i // 400:04d}",
            "Company": f"Company {i // 400} GmbH", "SKU": f"SKU{r.randint(1, 400):04d}", "Qty": str(r.randint(5, 120)),
            "UnitPrice": f"{r.uniform(2, 80):.2f}".replace(".", ","), "Region": r.choice(["North", "South", "West"]),
            "Account Type": "key" if i < 800 else "standard"}  # a kind of account, not which


def test_an_export_sorted_by_account_gets_its_account_not_a_measure_as_the_customer() -> None:
    pick = suggest(profile(_rows(2_000, _wholesale)))  # 5 accounts in the sample
    assert pick["customer"] == "Account"
    assert (pick["quantity"], pick["price"]) == ("Qty", "UnitPrice")


@pytest.mark.parametrize("measure", ["Qty", "Units", "Count", "Price", "Total", "Amount", "Score"])
def test_a_measure_is_never_the_customer(measure: str) -> None:
    """Whole numbers named as a measure, or numbers with decimals, are no customer id (whatever else there is)."""
    rows = _rows(2_000, lambda i, r: {"Date": _when(i, r), "Label": r.choice(["a", "b"]),
                                      measure: str(r.randint(1, 500)) if measure != "Score" else f"{r.uniform(0, 9):.2f}"})
    assert suggest(profile(rows)).get("customer") is None


@pytest.mark.parametrize("cell, phone", [
    (lambda i: f"{100_000 + i % 300:010d}", False),  # SAP's Kundennummer, zero-padded to ten digits
    (lambda i: f"{12_345_000 + i % 300:010d}", False),  # 0012345123: padded, not 00 and a country code
    (lambda i: f"0049 170 {1_000_000 + i % 300}", True),
    (lambda i: f"0044{7_700_900_000 + i % 300}", True),  # 14 digits in one run
])
def test_a_zero_padded_customer_number_is_no_phone_number(cell, phone: bool) -> None:
    """An ERP export's customer numbers (0000100234) were named phone numbers, personal data."""
    from features.inspect import pii_note

    rows = [{"Kundennummer": cell(i), "Belegdatum": f"2024-03-{1 + i % 28:02d} 10:00", "Betrag": "12.50"}
            for i in range(400)]
    p = next(p for p in profile(rows) if p.name == "Kundennummer")
    assert ("looks like phone numbers" in pii_note(p)) is phone
