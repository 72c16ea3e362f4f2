"""Fill the event log with realistic sample traffic, through the same append path as the API.

    python generate_events.py [--count N] [--start 2025-05-01] [--end 2025-05-29] [--users U]
                              [--seed S] [--db PATH] [--if-empty] [--url URL] [--batch-size B]

The traffic is a simulation, not uniform noise: users (each with a home city, a time zone
and a level of activity) open sessions that land on a page of a small shop's site map,
then view more pages and click elements that belong to those pages; users who share their
location send an occasional ``location`` event from their home area. Sessions start
following a daily rhythm in each user's local time, with quieter weekends.

Speed: Faker is used only to build pools (product names, post titles, …) once; the hot
loop samples those pools with one seeded ``random.Random``, and payloads that repeat
(every view of a page, every click on an element) are serialised once. Rows go to
``Storage.append`` in large batches: the log and its daily rollup are written in one
transaction per batch, exactly as the API writes them.

Determinism: the same ``--seed`` and options give the same rows, event ids included. An
event id is a UUIDv7 built from the event's own timestamp (48-bit milliseconds, then the
sub-millisecond microseconds in ``rand_a``, RFC 9562 method 3) and seeded random bits, and
rows are appended in timestamp order, so the ``event_id`` index only grows at its end.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import itertools
import math
import random
import re
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, TextIO
from zoneinfo import ZoneInfo

import orjson

from app import config as settings
from schema.backends import open_storage
from schema.events import EVENT_TYPES, MAX_BATCH_EVENTS, check_event
from schema.storage import EventRow, Storage, StorageIntegrityError, WriteGroup
from schema.timestamps import parse_day

DEFAULT_COUNT = 5_000
DEFAULT_START = date(2025, 5, 1)
DEFAULT_END = date(2025, 5, 29)
DEFAULT_BATCH = 25_000
SITE = "https://shop.example.com"
BRAND = "Northwind Outfitters"

VIEW, CLICK, LOCATION = 0, 1, 2  # indexes into EVENT_TYPES
assert EVENT_TYPES[VIEW] == "view" and EVENT_TYPES[CLICK] == "click"
assert EVENT_TYPES[LOCATION] == "location"

US_PER_S = 1_000_000
DAY_US = 86_400 * US_PER_S
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# Relative traffic by local hour of day: quiet at night, a peak around noon and in the evening.
HOURLY = (
    0.18, 0.11, 0.07, 0.05, 0.05, 0.08, 0.20, 0.42, 0.70, 0.90, 1.00, 1.00,
    0.95, 1.00, 1.00, 0.95, 0.90, 0.85, 0.85, 0.92, 0.95, 0.80, 0.55, 0.32,
)  # fmt: skip
HOURLY_CUM = list(itertools.accumulate(HOURLY))
WEEKDAY_WEIGHT = (1.00, 1.03, 1.02, 0.98, 0.92, 0.70, 0.66)  # Monday .. Sunday

# Session shape, tuned so the mix lands near 65 % views, 25 % clicks, 7.5 % locations.
CONTINUE = 0.83  # chance that a session goes on after each step (mean ~6 steps)
CLICK_STEP = 0.40  # a step is a click on the current page (else a view of another page)
FOLLOW_LINK = 0.55  # a click on a link is followed by the view of its target
SHARES_LOCATION = 0.6  # users who granted the geolocation permission
LOCATION_AT_START = 0.7  # …and whose session sends their position after the landing view
LOCATION_LATER = 0.04  # …or again after a later view
DWELL_POOL = 8_192  # dwell times are drawn once, then sampled: lognormvariate is slow

# The audience of a shop that ships to Europe and North America.
MARKETS = {
    "US", "CA", "GB", "IE", "DE", "FR", "ES", "PT", "IT", "NL", "BE", "AT", "CH", "SE", "NO",
    "DK", "FI", "PL", "CZ",
}  # fmt: skip

# Microseconds within a millisecond (0..999) scaled to 12 bits, strictly increasing.
_SUB_MS = [(us << 12) // 1000 for us in range(1000)]
# "Thh:mm:ss." for every second of a day, so a timestamp is one f-string per event.
_CLOCK = [f"T{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}." for s in range(86_400)]


# --- options ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    count: int = DEFAULT_COUNT
    start: date = DEFAULT_START
    end: date = DEFAULT_END
    users: int | None = None  # None: one user per ~25 events
    seed: int | None = None  # None: a random seed, printed so the run can be repeated
    db: str = "data/events.db"
    if_empty: bool = False
    url: str | None = None
    batch_size: int = DEFAULT_BATCH
    timeout: float = 300.0  # --url mode: the whole upload must finish within this
    progress: bool | None = None  # None: when stderr is a TTY or count > 100k

    @property
    def user_count(self) -> int:
        return self.users if self.users is not None else max(10, min(self.count // 25, 200_000))


# Values are taken exactly as written (the service's rule for every value it reads):
# int() would also take " 5\n" or "1_000", float() "nan", date.fromisoformat() "20250501".
def _whole(text: str) -> int:
    try:
        return settings.parse_int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive(text: str) -> int:
    value = _whole(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _non_negative(text: str) -> int:
    value = _whole(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


def _seconds(text: str) -> float:
    try:
        value = settings.parse_decimal(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if value <= 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return value


def _day(text: str) -> date:
    day = parse_day(text)
    if day is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date YYYY-MM-DD")
    return day


def parse_args(argv: Sequence[str] | None = None, environ: dict[str, str] | None = None) -> Options:
    """Options from the command line; ``--db`` falls back to ANALYTICS_DB like the service."""
    parser = argparse.ArgumentParser(
        prog="python generate_events.py",
        description="Generate realistic sample events into the database (or a running service).",
    )
    parser.add_argument("--count", type=_non_negative, default=DEFAULT_COUNT, help="events")
    parser.add_argument("--start", type=_day, default=DEFAULT_START, help="first day")
    parser.add_argument("--end", type=_day, default=DEFAULT_END, help="last day")
    parser.add_argument("--users", type=_positive, help="distinct users (default: count / 25)")
    parser.add_argument("--seed", type=_whole, help="random seed: same seed, same events")
    settings.add_arguments(parser, ("db",))
    parser.add_argument("--if-empty", action="store_true", help="do nothing if events exist")
    parser.add_argument(
        "--url", help="POST to a running service instead, e.g. http://127.0.0.1:5000"
    )
    parser.add_argument("--batch-size", type=_positive, default=DEFAULT_BATCH, help="rows per call")
    parser.add_argument("--timeout", type=_seconds, default=300.0, help="--url mode time limit (s)")
    progress = parser.add_mutually_exclusive_group()
    progress.add_argument("--progress", action="store_true", default=None, help="always show")
    progress.add_argument("--no-progress", dest="progress", action="store_false")
    args = parser.parse_args(argv)
    if args.end < args.start:
        parser.error("--end must not be before --start")
    return Options(
        count=args.count,
        start=args.start,
        end=args.end,
        users=args.users,
        seed=args.seed,
        db=settings.load(args, environ).db,
        if_empty=args.if_empty,
        url=args.url.rstrip("/") if args.url else None,
        batch_size=args.batch_size,
        timeout=args.timeout,
        progress=args.progress,
    )


# --- the world: a site map and its users -----------------------------------------------


@dataclass
class Page:
    url: str
    title: str
    view_json: str = ""
    links: list[int] = field(default_factory=list)  # pages this one links to
    # Clickable elements: (serialised click payload, page it leads to or -1), with weights.
    elements: list[tuple[str, int]] = field(default_factory=list)
    element_cum: list[float] = field(default_factory=list)


@dataclass
class Users:
    ids: list[str]
    activity_cum: list[float]  # heavy-tailed: a few users make many sessions
    zone: list[int]  # index into Users.zones: the home city's IANA time zone
    shares_location: list[bool]
    home: list[tuple[float, float]]  # a point in the user's neighbourhood
    accuracy_m: list[float]  # typical fix quality: GPS, Wi-Fi or cell/IP
    zones: list[ZoneInfo] = field(default_factory=list)

    def offsets_on(self, day: date) -> list[int]:
        """Each zone's UTC offset (seconds) at local noon of ``day``: daylight saving
        moves a user's activity in UTC, as it does for real visitors."""
        return [
            int(datetime(day.year, day.month, day.day, 12, tzinfo=z).utcoffset().total_seconds())  # type: ignore[union-attr]
            for z in self.zones
        ]


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


class SiteBuilder:
    """A small shop: home, categories, products, a blog, help pages and a checkout."""

    CATEGORIES = ("Jackets", "Backpacks", "Tents", "Footwear", "Sleeping Bags", "Accessories")
    MATERIALS = ("Merino", "Down", "Gore-Tex", "Ripstop", "Fleece", "Canvas", "Alpine", "Trail")

    def __init__(self, rng: random.Random, seed: int):
        from faker import Faker  # imported here: only pool building needs it (slow to import)

        self.rng = rng
        self.fake = Faker("en_US")
        self.fake.seed_instance(seed)
        self.pages: list[Page] = []
        self.by_url: dict[str, int] = {}
        self.popularity: list[float] = []

    def page(self, path: str, title: str, popularity: float) -> int:
        index = len(self.pages)
        self.pages.append(Page(SITE + path, f"{title} | {BRAND}"))
        self.by_url[path] = index
        self.popularity.append(popularity)
        return index

    def build(self) -> tuple[list[Page], list[float]]:
        fake, rng = self.fake, self.rng
        home = self.page("/", "Outdoor gear for every trail", 30)
        shop = self.page("/products", "All products", 8)
        blog = self.page("/blog", "Journal", 3)
        help_ = self.page("/help", "Help centre", 2)
        cart = self.page("/cart", "Your cart", 4)
        checkout = self.page("/checkout", "Checkout", 1.5)
        done = self.page("/checkout/confirmation", "Thank you for your order", 0.6)
        login = self.page("/account/login", "Sign in", 2)
        signup = self.page("/account/signup", "Create an account", 1)
        about = self.page("/about", "About us", 0.8)
        contact = self.page("/contact", "Contact", 0.7)
        privacy = self.page("/privacy", "Privacy policy", 0.3)
        sale = self.page("/sale", "Spring sale: up to 40 % off", 5)

        categories, products = [], []
        for name in self.CATEGORIES:
            cat = self.page(f"/products/{_slug(name)}", name, 4)
            categories.append(cat)
            mine = []
            for _ in range(10):
                product = f"{fake.color_name()} {rng.choice(self.MATERIALS)} {name.rstrip('s')}"
                path = f"/products/{_slug(name)}/{_slug(product)}-{rng.randrange(100, 999)}"
                mine.append(self.page(path, product, rng.paretovariate(1.2)))
            products.append(mine)
        posts = [
            self.page(f"/blog/{_slug(t)}", t, rng.paretovariate(1.5))
            for t in (fake.catch_phrase().title() for _ in range(16))
        ]
        articles = [
            self.page(f"/help/{_slug(t)}", t, 0.4)
            for t in (
                "Shipping and delivery times",
                "Returns and refunds",
                "Size guide",
                "Caring for down and waterproof gear",
                "Warranty and repairs",
                "Payment methods",
            )
        ]
        terms = [fake.word() for _ in range(4)] + ["rain jacket", "2 person tent", "hiking boots"]
        searches = [
            self.page(f"/search?q={t.replace(' ', '+')}", f"Search: {t}", 0.8) for t in terms
        ]

        header = [
            ("logo", "Northwind Outfitters", "/html/body/header/a[1]", home),
            ("nav-products", "Shop", "/html/body/header/nav/ul/li[1]/a", shop),
            ("nav-sale", "Sale", "/html/body/header/nav/ul/li[2]/a", sale),
            ("nav-blog", "Journal", "/html/body/header/nav/ul/li[3]/a", blog),
            ("nav-help", "Help", "/html/body/header/nav/ul/li[4]/a", help_),
            ("search-input", "", "/html/body/header/form/input", -1),
            ("cart-icon", "Cart", "/html/body/header/a[2]", cart),
            ("account-link", "Sign in", "/html/body/header/a[3]", login),
        ]
        footer = [  # footer links carry no id, as on many real sites
            (None, "About us", "/html/body/footer/ul/li[1]/a", about),
            (None, "Contact", "/html/body/footer/ul/li[2]/a", contact),
            (None, "Privacy", "/html/body/footer/ul/li[3]/a", privacy),
        ]

        def cards(targets: list[int], section: int, prefix: str) -> list[Any]:
            return [
                (
                    f"{prefix}-{i + 1}",
                    self.pages[t].title.split(" | ")[0],
                    f"/html/body/main/section[{section}]/div/article[{i + 1}]/a",
                    t,
                )
                for i, t in enumerate(targets)
            ]

        own: dict[int, list[Any]] = {
            home: [
                ("hero-cta", "Shop the spring sale", "/html/body/main/section[1]/a", sale),
                *cards([rng.choice(p) for p in products[:4]], 2, "featured-product"),
                *cards(posts[:3], 3, "journal-card"),
                ("newsletter-submit", "Subscribe", "/html/body/main/section[4]/form/button", -1),
            ],
            shop: cards(categories, 1, "category-card"),
            sale: [
                *cards(rng.sample([p for ps in products for p in ps], 8), 1, "sale-product"),
                ("sort-select", "Sort by: Featured", "/html/body/main/div[1]/select", -1),
            ],
            blog: cards(posts, 1, "post-card"),
            help_: [
                *cards(articles, 1, "help-topic"),
                ("chat-open", "Chat with us", "/html/body/aside/button", -1),
            ],
            cart: [
                ("checkout-button", "Proceed to checkout", "/html/body/main/aside/a", checkout),
                ("quantity-increase", "+", "/html/body/main/table/tbody/tr[1]/td[3]/button[2]", -1),
                ("remove-item", "Remove", "/html/body/main/table/tbody/tr[1]/td[4]/button", -1),
                ("continue-shopping", "Continue shopping", "/html/body/main/a", shop),
            ],
            checkout: [
                ("place-order", "Place order", "/html/body/main/form/button[@type='submit']", done),
                ("apply-coupon", "Apply", "/html/body/main/form/fieldset[3]/button", -1),
                (
                    "shipping-express",
                    "Express (1-2 days)",
                    "/html/body/main/form/fieldset[2]/label[2]",
                    -1,
                ),
            ],
            done: [("order-details", "View order details", "/html/body/main/a", -1)],
            login: [
                ("login-submit", "Sign in", "/html/body/main/form/button", home),
                ("forgot-password", "Forgot your password?", "/html/body/main/form/a", -1),
                ("signup-link", "Create an account", "/html/body/main/p/a", signup),
            ],
            signup: [("signup-submit", "Create account", "/html/body/main/form/button", home)],
            contact: [("contact-submit", "Send message", "/html/body/main/form/button", -1)],
        }
        for cat, mine in zip(categories, products, strict=True):
            own[cat] = [
                *cards(mine, 2, "product-card"),
                ("filter-size", "Size", "/html/body/main/aside/details[1]/summary", -1),
                ("sort-select", "Sort by: Featured", "/html/body/main/div[1]/select", -1),
            ]
            for product in mine:
                related = rng.sample([p for p in mine if p != product], 3)
                own[product] = [
                    ("add-to-cart", "Add to cart", "/html/body/main/div[2]/form/button[1]", cart),
                    ("buy-now", "Buy now", "/html/body/main/div[2]/form/button[2]", checkout),
                    ("size-option-m", "M", "/html/body/main/div[2]/form/fieldset/label[3]", -1),
                    ("color-swatch-2", "", "/html/body/main/div[2]/ul/li[2]/button", -1),
                    ("reviews-tab", "Reviews", "/html/body/main/section[2]/nav/a[2]", -1),
                    (
                        "breadcrumb-category",
                        self.pages[cat].title.split(" | ")[0],
                        "/html/body/main/nav/ol/li[2]/a",
                        cat,
                    ),
                    *cards(related, 3, "related-product"),
                ]
        for post in posts:
            own[post] = [
                ("share-twitter", "Share", "/html/body/main/article/footer/a[1]", -1),
                ("share-linkedin", "Share", "/html/body/main/article/footer/a[2]", -1),
                ("subscribe-newsletter", "Subscribe", "/html/body/main/aside/form/button", -1),
                *cards(rng.sample([p for p in posts if p != post], 2), 2, "related-post"),
                *cards([rng.choice(rng.choice(products))], 3, "shop-the-story"),
            ]
        for article in articles:
            own[article] = [
                ("helpful-yes", "Yes", "/html/body/main/footer/button[1]", -1),
                ("helpful-no", "No", "/html/body/main/footer/button[2]", -1),
                ("contact-support", "Contact support", "/html/body/main/footer/a", contact),
            ]
        for search in searches:
            hits = rng.sample([p for ps in products for p in ps], 4)
            own[search] = cards(hits, 1, "search-result")

        for index in range(len(self.pages)):
            self._finish(index, own.get(index, []), header, footer)
        return self.pages, self.popularity

    def _finish(self, index: int, own: list[Any], header: list[Any], footer: list[Any]) -> None:
        """Serialise the page's view and click payloads once, validated like the API does."""
        page = self.pages[index]
        page.view_json = _validated("view", {"url": page.url, "title": page.title})
        weights = []
        for group, weight in ((own, 6.0), (header, 1.0), (footer, 0.15)):
            for element_id, text, xpath, target in group:
                payload = {"element_id": element_id, "text": text or None, "xpath": xpath}
                if element_id:  # the CSS selector a tag manager would record, as an extra key
                    payload["selector"] = f"#{element_id}"
                page.elements.append((_validated("click", payload), target))
                weights.append(weight * self.rng.uniform(0.5, 1.5))
                if target >= 0 and target != index and target not in page.links:
                    page.links.append(target)
        page.element_cum = list(itertools.accumulate(weights))


def _validated(event_type: str, payload: dict[str, Any]) -> str:
    _, errors = check_event({"user_id": "u", "event_type": event_type, "payload": payload})
    if errors:
        raise AssertionError(f"generated an invalid {event_type} payload {payload}: {errors}")
    return orjson.dumps(payload).decode()


def _market_cities() -> list[tuple[float, float, str]]:
    from faker.providers.geo import Provider as Geo  # real places: coordinates, IANA zone

    return [(float(c[0]), float(c[1]), c[4]) for c in Geo.land_coords if c[3] in MARKETS]


def build_users(n: int, rng: random.Random) -> Users:
    cities = _market_cities()
    rng.shuffle(cities)
    # Zipf-like: the first cities are the shop's big markets.
    city_cum = list(itertools.accumulate(1 / (rank + 1) ** 0.8 for rank in range(len(cities))))
    users = Users([], [], [], [], [], [])
    zone_index: dict[str, int] = {}
    activity = 0.0
    for _ in range(n):
        lat, lon, zone = cities[bisect.bisect(city_cum, rng.random() * city_cum[-1])]
        users.ids.append(f"u-{rng.getrandbits(48):012x}")
        activity += rng.lognormvariate(0, 1.1)
        users.activity_cum.append(activity)
        if zone not in zone_index:
            zone_index[zone] = len(users.zones)
            users.zones.append(ZoneInfo(zone))
        users.zone.append(zone_index[zone])
        users.shares_location.append(rng.random() < SHARES_LOCATION)
        users.home.append((lat + rng.gauss(0, 0.03), lon + rng.gauss(0, 0.04)))
        users.accuracy_m.append(rng.choice((8.0, 12.0, 25.0, 65.0, 150.0, 1200.0)))
    return users


# --- traffic ---------------------------------------------------------------------------

# A pending event: (timestamp µs << 62 | 62 random bits, type, user index, payload JSON).
# The key sorts by time, breaks ties randomly and already holds the id's random bits.
Pending = tuple[int, int, int, str]


def daily_quotas(count: int, start: date, end: date) -> list[int]:
    """``count`` split over the days by weekday weight, summing to exactly ``count``."""
    days = [start + timedelta(days=i) for i in range((end - start).days + 1)]
    weights = [WEEKDAY_WEIGHT[d.weekday()] for d in days]
    total = sum(weights)
    exact = [count * w / total for w in weights]
    quotas = [math.floor(x) for x in exact]
    by_remainder = sorted(range(len(days)), key=lambda i: (quotas[i] - exact[i], i))
    for i in by_remainder[: count - sum(quotas)]:
        quotas[i] += 1
    return quotas


def event_id(key: int) -> str:
    """The UUIDv7 of a pending event's key: its millisecond, µs fraction and random bits."""
    ms, us = divmod(key >> 62, 1000)
    return "%08x-%04x-%04x-%04x-%012x" % (  # noqa: UP031 (faster than an f-string here)
        ms >> 16,
        ms & 0xFFFF,
        0x7000 | _SUB_MS[us],  # version 7, then rand_a: the microseconds within the ms
        0x8000 | (key >> 48 & 0x3FFF),  # variant 0b10, then the top 14 random bits
        key & 0xFFFF_FFFF_FFFF,
    )


@dataclass
class TrafficStats:
    type_counts: list[int] = field(default_factory=lambda: [0, 0, 0])
    first_ts: str | None = None
    last_ts: str | None = None

    def update(self, other: TrafficStats) -> None:
        self.type_counts, self.first_ts, self.last_ts = (
            other.type_counts,
            other.first_ts,
            other.last_ts,
        )


class Traffic:
    """Simulated sessions, emitted day by day in timestamp order as log rows."""

    TICK = 2_000  # events between yields, so the database writer can make progress meanwhile

    def __init__(self, options: Options, seed: int):
        self.options = options
        self.rng = random.Random(seed)
        self.pages, popularity = SiteBuilder(self.rng, seed).build()
        self.landing_cum = list(itertools.accumulate(popularity))
        self.users = build_users(options.user_count, self.rng)
        self.dwell_us = [_dwell_us(self.rng) for _ in range(DWELL_POOL)]
        self.offsets: list[int] = []  # per zone, on the day being generated
        self.type_counts = [0, 0, 0]
        self.first_ts: str | None = None
        self.last_ts: str | None = None

    def stats(self) -> TrafficStats:
        return TrafficStats(list(self.type_counts), self.first_ts, self.last_ts)

    def rows(self) -> Iterator[list[EventRow]]:
        """Chunks of rows in timestamp order; an empty chunk is only a chance to yield."""
        start_us = _epoch_us(self.options.start)
        end_us = _epoch_us(self.options.end) + DAY_US
        carry: list[Pending] = []
        for i, quota in enumerate(
            daily_quotas(self.options.count, self.options.start, self.options.end)
        ):
            day_us = start_us + i * DAY_US
            self.offsets = self.users.offsets_on(self.options.start + timedelta(days=i))
            today: list[Pending] = carry
            carry = []
            # Sessions that run past midnight continue on the next day; past the end they stop.
            remaining = since_tick = quota
            while remaining > 0:
                for event in self.session(day_us, remaining):
                    t = event[0] >> 62
                    if t >= end_us:
                        break
                    (today if t < day_us + DAY_US else carry).append(event)
                    remaining -= 1
                if since_tick - remaining >= self.TICK:
                    since_tick = remaining
                    yield []
            today.sort()
            day = (self.options.start + timedelta(days=i)).isoformat()
            for lo in range(0, len(today), self.TICK):
                yield self.format_rows(today[lo : lo + self.TICK], day, day_us)

    def format_rows(self, events: list[Pending], day: str, day_us: int) -> list[EventRow]:
        ids, counts, clock = self.users.ids, self.type_counts, _CLOCK
        rows = []
        for key, code, user, payload in events:
            seconds, us = divmod((key >> 62) - day_us, US_PER_S)
            rows.append(
                (
                    event_id(key),
                    ids[user],
                    EVENT_TYPES[code],
                    f"{day}{clock[seconds]}{us:06d}Z",
                    payload,
                )
            )
            counts[code] += 1
        if rows:
            self.first_ts = self.first_ts or rows[0][3]
            self.last_ts = rows[-1][3]
        return rows

    def session(self, day_us: int, limit: int) -> list[Pending]:
        """One visit: a landing view, maybe a position, then clicks and views until it ends."""
        rng, users, pages, dwell = self.rng, self.users, self.pages, self.dwell_us
        rand, bits = rng.random, rng.getrandbits
        user = bisect.bisect(users.activity_cum, rand() * users.activity_cum[-1])
        hour = bisect.bisect(HOURLY_CUM, rand() * HOURLY_CUM[-1])
        local_s = hour * 3600 + rand() * 3600
        t = day_us + int(((local_s - self.offsets[users.zone[user]]) % 86_400) * US_PER_S)
        page = bisect.bisect(self.landing_cum, rand() * self.landing_cum[-1])
        events: list[Pending] = [((t << 62) | bits(62), VIEW, user, pages[page].view_json)]
        shares = users.shares_location[user]
        if shares and rand() < LOCATION_AT_START:
            t += 300_000 + int(rand() * 3_000_000)  # the permission prompt was answered before
            events.append(((t << 62) | bits(62), LOCATION, user, self.location(user)))
        while len(events) < limit and rand() < CONTINUE:
            t += dwell[int(rand() * DWELL_POOL)]
            current = pages[page]
            if rand() < CLICK_STEP and current.elements:
                element = bisect.bisect(current.element_cum, rand() * current.element_cum[-1])
                payload, target = current.elements[element]
                events.append(((t << 62) | bits(62), CLICK, user, payload))
                if target < 0 or rand() >= FOLLOW_LINK or len(events) >= limit:
                    continue
                page = target
                t += 150_000 + int(rand() * 1_200_000)  # the next page loads
            else:
                page = self.next_page(current)
            events.append(((t << 62) | bits(62), VIEW, user, pages[page].view_json))
            if shares and len(events) < limit and rand() < LOCATION_LATER:
                t += 200_000 + int(rand() * 2_000_000)
                events.append(((t << 62) | bits(62), LOCATION, user, self.location(user)))
        return events[:limit]

    def next_page(self, current: Page) -> int:
        """Mostly a page the current one links to; sometimes anywhere (search, bookmark)."""
        if current.links and self.rng.random() < 0.7:
            return current.links[int(self.rng.random() * len(current.links))]
        return bisect.bisect(self.landing_cum, self.rng.random() * self.landing_cum[-1])

    def location(self, user: int) -> str:
        """A fix near the user's home: jitter grows with the fix's stated accuracy."""
        rng = self.rng
        lat, lon = self.users.home[user]
        accuracy = self.users.accuracy_m[user] * (0.5 + rng.random())
        spread = accuracy / 111_000  # metres to degrees of latitude, roughly
        lat = min(90.0, max(-90.0, lat + rng.gauss(0, spread)))
        lon = (lon + rng.gauss(0, spread) + 180.0) % 360.0 - 180.0
        return orjson.dumps(
            {"latitude": round(lat, 6), "longitude": round(lon, 6), "accuracy": round(accuracy, 1)}
        ).decode()


def _dwell_us(rng: random.Random) -> int:
    """Time on a page before the next action: log-normal, median ~20 s, capped at 20 min."""
    return max(1_000, min(int(rng.lognormvariate(16.8, 1.0)), 1_200 * US_PER_S))


def _epoch_us(day: date) -> int:
    moment = datetime(day.year, day.month, day.day, tzinfo=UTC)
    return (moment - EPOCH) // timedelta(microseconds=1)


# --- progress and summary --------------------------------------------------------------


class Progress:
    """One line on stderr, redrawn in place on a TTY, or a line every few seconds otherwise."""

    def __init__(self, total: int, enabled: bool, stream: TextIO = sys.stderr):
        self.total, self.enabled, self.stream = total, enabled, stream
        self.tty = stream.isatty()
        self.started = time.perf_counter()
        self.shown = 0.0

    def update(self, done: int) -> None:
        if not self.enabled or not done:
            return
        now = time.perf_counter()
        if now - self.shown < (0.2 if self.tty else 5.0):
            return
        self.shown = now
        rate = done / max(now - self.started, 1e-9)
        line = f"  {done:,}/{self.total:,} events ({done / max(self.total, 1):.0%}), {rate:,.0f}/s"
        self.stream.write(f"\r{line}\033[K" if self.tty else line + "\n")
        self.stream.flush()

    def finish(self) -> None:
        if self.enabled and self.tty and self.shown:
            self.stream.write("\r\033[K")
            self.stream.flush()


@dataclass
class Summary:
    target: str
    seed: int
    events: int = 0
    by_type: dict[str, int] = field(default_factory=dict)
    first: str | None = None
    last: str | None = None
    users: int = 0
    seconds: float = 0.0
    skipped: str | None = None  # why nothing was generated
    failed: int = 0  # --url mode: events not accepted

    def span(self) -> str:
        if self.first is None:
            return "timestamps assigned by the server" if self.target.startswith("http") else "-"
        return f"{self.first} .. {self.last}"

    def lines(self) -> list[str]:
        if self.skipped:
            return [f"{self.target}: {self.skipped}; nothing generated"]
        rate = self.events / self.seconds if self.seconds else 0.0
        mix = "  ".join(
            f"{t} {n:,} ({n / max(self.events, 1):.1%})" for t, n in self.by_type.items()
        )
        lines = [
            f"{self.target}: {self.events:,} events in {self.seconds:.2f} s ({rate:,.0f} events/s)",
            f"  {mix}",
            f"  {self.span()}, {self.users:,} users, seed {self.seed}",
        ]
        if self.failed:
            lines.append(f"  {self.failed:,} events were NOT accepted")
        return lines


# --- writing: the database, through Storage.append ----------------------------------


async def has_events(db: str) -> bool:
    """Whether the database (created or upgraded first) already holds events."""
    store = open_storage(db)
    await store.open()
    try:
        return await store.newest_bucket() is not None
    finally:
        await store.close()


async def write_db(
    options: Options, chunks: AsyncIterator[list[EventRow]], progress: Progress
) -> int:
    """Append every row through ``Storage.append`` (log + rollup, one transaction per
    batch). One batch at a time is in flight on the store's writer thread, so its commit
    (and the WAL checkpoint it may run, without the GIL) overlaps with producing the next
    batch."""
    # synchronous=NORMAL: WAL commits skip the fsync. Nobody is acknowledged here, and a
    # crash can only lose the batches of this run, so rerunning is the recovery.
    store = open_storage(options.db, synchronous="NORMAL")
    await store.open()
    pending: asyncio.Task[object] | None = None
    batch: list[EventRow] = []
    written = 0
    try:
        async for chunk in chunks:
            batch += chunk
            while len(batch) >= options.batch_size:
                pending = await _hand_over(store, pending, batch[: options.batch_size])
                written += options.batch_size
                batch = batch[options.batch_size :]
            progress.update(written)
        if batch:
            pending = await _hand_over(store, pending, batch)
            written += len(batch)
        if pending is not None:
            await pending
    except BaseException:
        if pending is not None and not pending.done():
            pending.cancel()
            await asyncio.gather(pending, return_exceptions=True)
        raise
    finally:
        await store.close()
    return written


async def chunks_in_process(
    traffic: Traffic, stats: TrafficStats
) -> AsyncGenerator[list[EventRow]]:
    """The simulation's chunks, yielding to the event loop between them."""
    for chunk in traffic.rows():
        yield chunk
        await asyncio.sleep(0)  # let the pending append take its next step
    stats.update(traffic.stats())


async def _hand_over(
    store: Storage, pending: asyncio.Task[object] | None, rows: list[EventRow]
) -> asyncio.Task[object]:
    """Wait for the previous batch (at most one in flight), then start appending ``rows``."""
    if pending is not None:
        await pending
    return asyncio.create_task(store.append([WriteGroup(rows)]))


# --- sending: a running service, through POST /events/batch -----------------------------


class UploadError(Exception):
    """The service refused a batch for a reason a retry cannot fix."""


async def send_http(
    options: Options, traffic: Traffic, progress: Progress
) -> tuple[dict[str, int], int]:
    """POST the events in batches of at most 1000, a few requests in flight; the server
    assigns ids and timestamps. Returns (accepted events per type, events not accepted)."""
    import aiohttp

    per_request = min(options.batch_size, MAX_BATCH_EVENTS)
    run_id = uuid.UUID(int=random.getrandbits(128)).hex  # Idempotency-Key: retries are safe
    accepted: Counter[str] = Counter()
    failed = 0
    queue: asyncio.Queue[tuple[int, list[EventRow]] | None] = asyncio.Queue(maxsize=8)

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal failed
        while (item := await queue.get()) is not None:
            number, rows = item
            body = b'{"events":[' + b",".join(_event_json(row) for row in rows) + b"]}"
            try:
                await _post_batch(session, options.url or "", body, f"gen-{run_id}-{number}")
            except UploadError as exc:
                failed += len(rows)
                print(f"batch {number} refused: {exc}", file=sys.stderr)
            else:
                accepted.update(row[2] for row in rows)
            progress.update(accepted.total() + failed)

    timeout = aiohttp.ClientTimeout(total=30)
    async with asyncio.timeout(options.timeout), aiohttp.ClientSession(timeout=timeout) as session:
        workers = [asyncio.create_task(worker(session)) for _ in range(4)]
        try:
            pending: list[EventRow] = []
            number = 0
            for chunk in traffic.rows():
                pending += chunk
                while len(pending) >= per_request:
                    await queue.put((number, pending[:per_request]))
                    pending = pending[per_request:]
                    number += 1
            if pending:
                await queue.put((number, pending))
            for _ in workers:
                await queue.put(None)
            await asyncio.gather(*workers)
        finally:
            for task in workers:
                task.cancel()
    return {t: accepted[t] for t in EVENT_TYPES if accepted[t]}, failed


def _event_json(row: EventRow) -> bytes:
    _, user_id, event_type, _, payload = row
    return b'{"user_id":%s,"event_type":"%s","payload":%s}' % (
        orjson.dumps(user_id),
        event_type.encode(),
        payload.encode(),
    )


async def _post_batch(session: Any, url: str, body: bytes, key: str) -> int:
    """One batch, retried on 503 and connection errors (the Idempotency-Key makes that safe)."""
    import aiohttp

    headers = {"Content-Type": "application/json", "Idempotency-Key": key}
    for attempt in range(6):
        try:
            async with session.post(url + "/events/batch", data=body, headers=headers) as response:
                if response.status == 202:
                    return int((await response.json())["accepted"])
                if response.status != 503:
                    raise UploadError(f"HTTP {response.status}: {(await response.text())[:500]}")
                delay = float(response.headers.get("Retry-After", "1"))
        except (aiohttp.ClientConnectionError, TimeoutError):
            delay = 0.5 * 2**attempt
        await asyncio.sleep(min(delay, 10.0))
    raise UploadError("still unavailable after 6 attempts")


async def service_has_events(url: str) -> bool:
    """Whether the service at ``url`` already holds events; fails fast when it is not up."""
    import aiohttp

    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
            session.get(url + "/analytics/event-counts") as response,
        ):
            response.raise_for_status()
            return (await response.json())["total_events"] > 0
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise UploadError(f"cannot reach the service: {exc or type(exc).__name__}") from exc


# --- entry points ----------------------------------------------------------------------


async def run(options: Options) -> Summary:
    """Generate the events of ``options`` into the database or the service at ``options.url``."""
    seed = options.seed if options.seed is not None else random.SystemRandom().getrandbits(32)
    summary = Summary(target=options.url or options.db, seed=seed)
    if options.url is None:
        # Opening migrates: the generator may run before the service ever did.
        if await has_events(options.db) and options.if_empty:
            summary.skipped = "the events table already has rows"
            return summary
    elif await service_has_events(options.url) and options.if_empty:
        summary.skipped = "the service already has events"
        return summary

    started = time.perf_counter()
    show = options.progress
    if show is None:
        show = sys.stderr.isatty() or options.count > 100_000
    progress = Progress(options.count, show)
    stats = TrafficStats()
    try:
        if options.url is not None:
            traffic = Traffic(options, seed)
            summary.by_type, summary.failed = await send_http(options, traffic, progress)
            summary.events = sum(summary.by_type.values())
        else:
            chunks = chunks_in_process(Traffic(options, seed), stats)
            async with contextlib.aclosing(chunks):
                summary.events = await write_db(options, chunks, progress)
            summary.by_type = dict(zip(EVENT_TYPES, stats.type_counts, strict=True))
            summary.first, summary.last = stats.first_ts, stats.last_ts
    finally:
        progress.finish()
    summary.seconds = time.perf_counter() - started
    summary.users = options.user_count
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    try:
        summary = asyncio.run(run(options))
    except StorageIntegrityError as exc:
        print(
            f"{options.db}: {exc}: these events are already stored (same --seed and options?); "
            "use another --seed or a fresh database",
            file=sys.stderr,
        )
        return 1
    except TimeoutError:
        print(f"{options.url}: not finished within {options.timeout:g} s", file=sys.stderr)
        return 1
    except UploadError as exc:
        print(f"{options.url}: {exc}", file=sys.stderr)
        return 1
    print("\n".join(summary.lines()))
    return 1 if summary.failed else 0


if __name__ == "__main__":
    sys.exit(main())
