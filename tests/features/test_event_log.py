"""Event-log import (``import-events``): a table of views, carts, purchases and e-mail
activity becomes the events a live stream would have carried."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from features.events import decode, read_jsonl
from features.importer import ImportConfig, ImportFailed, import_transactions
from scoring.backtest import BacktestConfig, run_backtest
from scoring.simulator import SimulationConfig, write_jsonl
from streams.cli import main


def _csv(rows: list[dict[str, str]]) -> list[str]:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue().splitlines(keepends=True)


# ----------------------------------------------------------- the shapes of public shop logs
def test_retailrocket_shape_epoch_ms_views_carts_and_transactions_without_prices() -> None:
    rows = [
        {"timestamp": "1433221332117", "visitorid": "257597", "event": "view", "itemid": "355908", "transactionid": ""},
        {"timestamp": "1433221999827", "visitorid": "111016", "event": "addtocart", "itemid": "318965", "transactionid": ""},
        {"timestamp": "1433222000827", "visitorid": "111016", "event": "transaction", "itemid": "318965", "transactionid": "4000"},
        {"timestamp": "1433222000827", "visitorid": "111016", "event": "transaction", "itemid": "1234", "transactionid": "4000"},
        {"timestamp": "1433223236124", "visitorid": "483717", "event": "wishlist", "itemid": "253185", "transactionid": ""},
        {"timestamp": "1433223236124", "visitorid": "483717", "event": "transaction", "itemid": "253185", "transactionid": ""},
    ]
    cfg = ImportConfig(customer="visitorid", time="timestamp", action="event", product="itemid",
                       order="transactionid")
    result = import_transactions(_csv(rows), cfg)
    kinds = [(e["type"], e.get("action", e.get("status"))) for e in result.events]
    assert kinds == [("web", "product_view"), ("web", "add_to_cart"), ("purchase", "completed")]
    order = result.events[2]
    assert order["order_id"] == "4000" and [i["product_id"] for i in order["items"]] == ["318965", "1234"]
    assert order["amount"] == 0.0
    assert result.events[0]["ts"] == "2015-06-02T05:02:12.117+00:00"
    summary = result.summary()
    assert summary["event_types"] == {"web": 2, "purchase": 1}
    assert summary["unmapped_actions"] == {"wishlist": 1}
    assert "amount 0" in summary["amounts"]
    assert [(e.line, e.reason.split(" (")[0]) for e in result.errors] == [
        (6, "unknown action"), (7, "missing order")]


def test_rees46_shape_utc_suffix_prices_and_a_sessions_purchases_as_one_order() -> None:
    session = "9333dfbd-b87a-4708-9857-6336556b0fcc"
    base = {"category_id": "2053013552326770905", "brand": "aqua", "user_id": "554748717",
            "user_session": session}
    rows = [
        {**base, "event_time": "2019-10-01 00:00:05 UTC", "event_type": "cart", "product_id": "3900821",
         "category_code": "appliances.water_heater", "price": "33.20"},
        {**base, "event_time": "2019-10-01 00:01:05 UTC", "event_type": "purchase", "product_id": "3900821",
         "category_code": "appliances.water_heater", "price": "33.20"},
        {**base, "event_time": "2019-10-01 00:01:07 UTC", "event_type": "purchase", "product_id": "17300353",
         "category_code": "", "price": "380.96"},
        {**base, "event_time": "2019-10-02 09:00:00 UTC", "event_type": "purchase", "product_id": "17300353",
         "category_code": "", "price": "380.96", "user_session": "another"},
        {**base, "event_time": "2019-10-01 00:01:09 UTC", "event_type": "remove_from_cart",
         "product_id": "17300353", "category_code": "", "price": "380.96"},
    ]
    cfg = ImportConfig(customer="user_id", time="event_time", action="event_type", session="user_session",
                       product="product_id", category="category_code", price="price",
                       default_currency="USD", extra=("brand",))
    result = import_transactions(_csv(rows), cfg)
    assert not result.errors
    purchases = [e for e in result.events if e["type"] == "purchase"]
    assert [(p["amount"], len(p["items"]), p["ts"][:19]) for p in purchases] == [
        (414.16, 2, "2019-10-01T00:01:05"), (380.96, 1, "2019-10-02T09:00:00")]
    assert purchases[0]["currency"] == "USD" and purchases[0]["brand"] == "aqua"
    web = [e for e in result.events if e["type"] == "web"]
    assert [(w["action"], w["session_id"]) for w in web] == [("add_to_cart", session), ("remove_from_cart", session)]
    assert web[0]["category"] == "appliances.water_heater" and "category" not in web[1]
    assert "amounts" not in result.summary()


def test_own_words_campaign_rows_and_what_cannot_be_read() -> None:
    rows = [
        {"at": "2024-03-01T10:00:00Z", "who": "c1", "what": "Newsletter Read", "camp": "spring", "via": "",
         "value": ""},
        {"at": "2024-03-01T10:05:00Z", "who": "c1", "what": "email_link_clicked", "camp": "spring", "via": "SMS",
         "value": ""},
        {"at": "2024-03-01T10:06:00Z", "who": "c1", "what": "bookmark", "camp": "", "via": "", "value": ""},
        {"at": "2024-03-01T10:07:00Z", "who": "c1", "what": "opened", "camp": "", "via": "", "value": ""},
        {"at": "2024-03-01T10:08:00Z", "who": "c1", "what": "clicked", "camp": "spring", "via": "fax", "value": ""},
        {"at": "2024-03-01T10:09:00Z", "who": "c1", "what": "Order Refunded", "camp": "", "via": "",
         "value": "-19.90"},
        {"at": "2024-03-01T10:10:00Z", "who": "c1", "what": "PV", "camp": "", "via": "", "value": ""},
    ]
    cfg = ImportConfig(customer="who", time="at", action="what", campaign="camp", channel="via",
                       amount="value", actions={"newsletter read": "opened", "bookmark": "skip",
                                                "pv": "page_view"})
    result = import_transactions(_csv(rows), cfg)
    got = [(e["type"], e.get("action") or e["status"], e.get("channel")) for e in result.events]
    assert got == [("campaign", "opened", "email"), ("campaign", "clicked", "sms"),
                   ("purchase", "refunded", None), ("web", "page_view", None)]
    assert result.events[2]["amount"] == 19.9
    assert [(e.line, e.reason.split(" (")[0]) for e in result.errors] == [
        (4, "action skipped"), (5, "missing campaign"), (6, "bad channel: not one of ads, email, push, sms, web")]
    # Without a campaign column, campaign rows cannot become events: said, not guessed.
    no_campaign = import_transactions(_csv(rows[:1]), ImportConfig(
        customer="who", time="at", action="what", actions={"newsletter read": "opened"}))
    assert no_campaign.errors[0].reason == "campaign action without a campaign column (--campaign)"


def test_a_log_read_twice_gives_what_a_log_held_in_memory_gives() -> None:
    # A file is read twice (decide, then parse) instead of held: the same events, errors and summary.
    rows = [{"t": f"{10 + i % 19}/0{1 + i % 9}/2024 10:{i % 60:02d}", "c": f"c{i % 7}",
             "a": ["view", "cart", "purchase", "sent", "opened", "like", "purchase"][i % 7],
             "s": f"s{i // 5}", "camp": "spring" if i % 2 else "", "v": f"{i},5" if i % 11 else "x"}
            for i in range(200)]
    rows.insert(50, {"t": "13/13/2024", "c": "c1", "a": "view", "s": "", "camp": "", "v": ""})
    cfg = ImportConfig(customer="c", time="t", action="a", session="s", campaign="camp", amount="v")
    lines = _csv(rows)
    held = import_transactions(lines, cfg)
    opened: list[int] = []
    twice = import_transactions(lambda: opened.append(1) or lines, cfg)
    assert len(opened) == 2
    assert held.events and held.errors and held.decimal.startswith("comma") and held.date_order.startswith("dmy")
    assert (twice.events, twice.errors, twice.summary()) == (held.events, held.errors, held.summary())


def test_a_column_of_many_values_is_not_echoed_as_actions() -> None:
    rows = [{"t": f"2024-03-0{1 + i % 9}T10:00:00Z", "c": f"c{i}", "a": f"person{i}@example.com"}
            for i in range(30)]
    result = import_transactions(_csv(rows), ImportConfig(customer="c", time="t", action="a"))
    shown = json.dumps(result.summary())
    assert "example.com" not in shown and "30 distinct values" in shown
    assert result.summary()["rows_skipped"] == 30


def test_other_action_words_are_read_as_one_action_when_asked() -> None:
    """A clickstream names its pages (home, catalog, checkout_step_2): ``--others page_view``."""
    rows = [{"t": f"2024-03-01T10:0{i}:00Z", "c": "c1", "a": a}
            for i, a in enumerate(["home", "Catalog", "view", "checkout step 2", "wishlist", "purchase"])]
    cfg = ImportConfig(customer="c", time="t", action="a", actions={"wishlist": "skip"}, other_actions="page_view")
    result = import_transactions(_csv(rows), cfg)
    assert [(e["type"], e.get("action")) for e in result.events] == [
        ("web", "page_view"), ("web", "page_view"), ("web", "product_view"), ("web", "page_view"),
        ("purchase", None)]
    summary = result.summary()
    assert summary["actions_read_as_page_view"] == {"home": 1, "catalog": 1, "checkout_step_2": 1}
    assert summary["skipped_by_reason"] == {"action skipped (--map VALUE=skip)": 1}
    assert "unmapped_actions" not in summary
    without = import_transactions(_csv(rows), ImportConfig(customer="c", time="t", action="a"))
    assert without.summary()["unmapped_actions"] == {"home": 1, "catalog": 1, "checkout_step_2": 1, "wishlist": 1}
    with pytest.raises(ImportFailed, match="--others like"):
        import_transactions(_csv(rows), ImportConfig(customer="c", time="t", action="a", other_actions="like"))


def test_a_map_to_an_unknown_action_is_refused_before_reading() -> None:
    with pytest.raises(ImportFailed, match="--map like=favourite"):
        import_transactions(_csv([{"t": "2024-03-01T10:00:00Z", "c": "c1", "a": "like"}]),
                            ImportConfig(customer="c", time="t", action="a", actions={"like": "favourite"}))


def test_event_ids_of_the_log_are_kept_and_a_reimport_gives_the_same_ids() -> None:
    rows = [{"id": "ev-1", "t": "2024-03-01T10:00:00Z", "c": "c1", "a": "page_view"},
            {"id": "ev-2", "t": "2024-03-01T10:00:00Z", "c": "c1", "a": "page_view"},
            {"id": "", "t": "2024-03-01T10:01:00Z", "c": "c1", "a": "page_view"}]
    with_ids = import_transactions(_csv(rows), ImportConfig(customer="c", time="t", action="a", event_id="id"))
    assert [e["event_id"] for e in with_ids.events] == ["ev-1", "ev-2"]
    assert with_ids.errors[0].reason == "missing event id"
    hashed = ImportConfig(customer="c", time="t", action="a")
    first = [e["event_id"] for e in import_transactions(_csv(rows), hashed).events]
    assert first == [e["event_id"] for e in import_transactions(_csv(rows), hashed).events]
    assert len(set(first)) == 3


# ------------------------------------------------- a whole history, exported and read back
WEB_WORDS = {"page_view": "pageview", "product_view": "view", "add_to_cart": "addtocart",
             "remove_from_cart": "remove_from_cart", "search": "search", "signup": "sign-up",
             "login": "Login"}


def _as_log(events: list, path: Path) -> None:
    """The simulated history as a warehouse export: a row per event, a row per purchased item."""
    fields = ["event_id", "customer", "time", "what", "session", "product", "category", "campaign",
              "channel", "order", "quantity", "price"]
    with open(path, "w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=fields)
        writer.writeheader()
        for ev in events:
            row = {"event_id": ev.event_id, "customer": ev.customer_id, "time": str(ev.ts_ms)}
            if ev.type == "web":
                row.update(what=WEB_WORDS[ev.action], session=ev.session_id or "",
                           product=ev.product_id or "", category=ev.category or "")
                writer.writerow(row)
            elif ev.type == "campaign":
                row.update(what=f"email_{ev.action}" if ev.channel == "email" else ev.action,
                           campaign=ev.campaign_id, channel=ev.channel)
                writer.writerow(row)
            else:
                row.update(what="purchase" if ev.status == "completed" else "refund", order=ev.order_id)
                for item in ev.items or [None]:
                    if item is None:
                        writer.writerow({**row, "quantity": "1", "price": repr(ev.amount)})
                    else:
                        writer.writerow({**row, "product": item.product_id, "category": item.category,
                                         "quantity": repr(item.quantity), "price": repr(item.price)})


def test_a_simulated_history_exported_as_a_log_imports_back_and_backtests_the_same(tmp_path: Path) -> None:
    original = tmp_path / "sim.jsonl"
    write_jsonl(SimulationConfig(customers=250, days=150, seed=11), original)
    with open(original, "rb") as f:
        events = [e for e in (decode(line) for line in f) if not hasattr(e, "reason")]
    log = tmp_path / "log.csv"
    _as_log(events, log)
    back = tmp_path / "back.jsonl"
    rc = main(["import-events", str(log), "--customer", "customer", "--time", "time", "--action", "what",
               "--session", "session", "--product", "product", "--category", "category", "--campaign",
               "campaign", "--channel", "channel", "--order", "order", "--quantity", "quantity",
               "--price", "price", "--event-id", "event_id", "--out", str(back)])
    assert rc == 0
    with open(back, "rb") as f:
        imported = [e for _, e in read_jsonl(f) if not hasattr(e, "reason")]
    assert len(imported) == len(events)

    def essence(e):  # what features read; purchase ids are the importer's own, urls are never imported
        if e.type == "purchase":
            return (e.customer_id, e.ts_ms, e.type, e.order_id, round(e.amount, 6), e.status)
        if e.type == "web":
            return (e.event_id, e.customer_id, e.ts_ms, e.action, e.session_id, e.product_id, e.category)
        return (e.event_id, e.customer_id, e.ts_ms, e.action, e.campaign_id, e.channel)

    assert sorted(map(essence, imported), key=repr) == sorted(
        (essence(e) for e in events), key=repr)
    reports = []
    for path in (original, back):
        with open(path, "rb") as f:
            reports.append(run_backtest(f, BacktestConfig(batch_baseline=False)))
    for kind in ("purchase_propensity", "churn_risk", "campaign_response"):
        a, b = reports[0]["kinds"][kind], reports[1]["kinds"][kind]
        assert a["labels"] > 50 and a["positives"] > 0
        assert (b["labels"], b["positives"]) == (a["labels"], a["positives"])
        assert b["auc"] == pytest.approx(a["auc"], abs=1e-9)


def test_extra_columns_that_are_event_fields_are_refused_only_where_the_import_writes_them() -> None:
    rows = [{"t": "2024-03-01T10:00:00Z", "c": "c1", "a": "purchase", "total": "5", "category": "books"}]
    # A transaction table writes purchases only: a 'category' column may ride along.
    sold = import_transactions(_csv(rows), ImportConfig(customer="c", time="t", amount="total",
                                                        extra=("category",)))
    assert sold.events[0]["category"] == "books"
    with pytest.raises(ImportFailed, match="clash with event fields"):
        import_transactions(_csv(rows), ImportConfig(customer="c", time="t", amount="total", action="a",
                                                     extra=("category",)))


def test_a_ga4_bigquery_export_in_json_lines() -> None:
    """GA4's BigQuery export: epoch microseconds as strings, nested ecommerce, GA4's event names."""
    base = 1_680_700_930_123_456  # 2023-04-05T13:22:10.123456Z
    rows = [
        {"event_name": "session_start", "event_timestamp": str(base), "user_pseudo_id": "111.222"},
        {"event_name": "page_view", "event_timestamp": str(base + 1_000_000), "user_pseudo_id": "111.222"},
        {"event_name": "view_item", "event_timestamp": str(base + 2_876_543), "user_pseudo_id": "111.222"},
        {"event_name": "add_to_cart", "event_timestamp": str(base + 4_000_000), "user_pseudo_id": "111.222"},
        {"event_name": "begin_checkout", "event_timestamp": str(base + 5_000_000), "user_pseudo_id": "111.222"},
        {"event_name": "purchase", "event_timestamp": str(base + 6_000_000), "user_pseudo_id": "111.222",
         "ecommerce": {"transaction_id": "T-1", "purchase_revenue": 59.9}},
        {"event_name": "purchase", "event_timestamp": str(base + 7_000_000), "user_pseudo_id": "333.444",
         "ecommerce": {"transaction_id": "T-2", "purchase_revenue": None}},
    ]
    for r in rows:  # GA4 keeps the session in a list of typed key-value params
        r["event_params"] = [
            {"key": "page_title", "value": {"string_value": "Shop", "int_value": None}},
            {"key": "ga_session_id", "value": {"string_value": None, "int_value": "1680700900"}},
        ]
    lines = [json.dumps(r) + "\n" for r in rows]
    cfg = ImportConfig(customer="user_pseudo_id", time="event_timestamp", action="event_name",
                       order="ecommerce.transaction_id", amount="ecommerce.purchase_revenue",
                       session="event_params.ga_session_id", default_currency="USD", other_actions="skip")
    result = import_transactions(lines, cfg)
    events = result.events
    assert [(e["type"], e.get("action"), e["ts"]) for e in events] == [
        ("web", "page_view", "2023-04-05T13:22:11.123+00:00"),
        ("web", "product_view", "2023-04-05T13:22:12.999+00:00"),  # 12.999999 s: cut, not rounded up
        ("web", "add_to_cart", "2023-04-05T13:22:14.123+00:00"),
        ("purchase", None, "2023-04-05T13:22:16.123+00:00"),
    ]
    assert events[-1]["amount"] == 59.9 and events[-1]["order_id"] == "T-1"
    assert {e["session_id"] for e in events if e["type"] == "web"} == {"1680700900"}
    summary = result.summary()
    assert summary["actions_read_as_skip"] == {"session_start": 1, "begin_checkout": 1}
    assert summary["skipped_by_reason"] == {"action skipped (--others skip)": 2, "missing amount": 1}
