"""A local CoinAPI market-data WebSocket v1 server (tests, demos, the daemon's embedded setup).

Faithful to the documented protocol where the adapter depends on it:

* the first ``hello`` / ``subscribe`` must carry the right ``apikey``: otherwise
  ``{"type": "error", "message": "Invalid API key"}`` and the server closes the connection;
  a request it cannot decode gets an error and a close too (CoinAPI: "all errors are permanent");
* ``hello`` replaces the subscription scope, ``subscribe`` adds to it, ``unsubscribe`` removes
  from it; ``subscribe_filter_symbol_id`` entries are prefixes, or exact with a trailing ``$``;
  ``subscribe_filter_exchange_id`` is honoured too; no acknowledgement is sent (CoinAPI sends
  none);
* ``trade`` and ``quote`` messages, one per frame, with ``sequence`` counted per
  (type, symbol_id) per connection, ``time_exchange`` / ``time_coinapi`` with 7 fractional
  digits, numbers with 9 decimals; trade ``taker_side`` cycles through BUY/SELL and, for some
  trades, the ``_ESTIMATED`` variants and ``UNKNOWN``;
* heartbeats only after a second (``heartbeat_interval``) of silence and only if the hello asked
  for them, spelled ``hearbeat`` as documented, or ``heartbeat`` (``heartbeat_type``);
* the reconnect notice carries ``within_seconds`` and ``before_time``; a connection still open at
  that deadline is closed by the server (counted in ``forced_closes``).

The market's instruments (``cfg.prices`` keys) are CoinAPI symbol ids, e.g.
``COINBASE_SPOT_BTC_USD``. Faults (:class:`~fairfeed.local.faults.Fault`) map to:
REJECT_SUBSCRIBE → a rate-limit ``error`` and a close (``echo_requests``: every error quotes
the request, API key included, as some providers do); MALFORMED → truncated JSON frames;
RECONNECT_NOTICE → the ``reconnect`` message; SEQUENCE_GAP → every (type, symbol) sequence of
each open connection skips ``amount`` numbers once; STALL, HEARTBEATS_ONLY, DISCONNECT,
EXCHANGE_DELAY and PRICE_OFFSET as in the base.
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import time
from collections import deque
from typing import Any

import msgspec
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from fairfeed.core.config import SimulatorConfig
from fairfeed.local.faults import Fault
from fairfeed.local.market import EventBatch
from fairfeed.local.wsserver import Conn, LocalWsServer
from fairfeed.providers.coinapi.wire import CLIENT_DECODER, Hello, Subscribe, Unsubscribe

INVALID_KEY = "Invalid API key"
RATE_LIMITED = "You have exceeded your API key rate limits"
_ESTIMATED_EVERY = 5  # every 5th trade's side is marked _ESTIMATED
_UNKNOWN_EVERY = 7  # every 7th trade's side is UNKNOWN


def iso7(ns: int) -> str:
    """``YYYY-MM-DDTHH:MM:SS.fffffffZ``: CoinAPI's format, 100 ns resolution (truncated)."""
    sec, rem = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)) + f".{rem // 100:07d}Z"


def iso_to_ns_reference(s: str) -> int:
    """Slow, obviously-correct oracle of the parser's timestamp conversion (tests)."""
    head, _, frac = s.rstrip("Z").partition(".")
    sec = calendar.timegm(time.strptime(head, "%Y-%m-%dT%H:%M:%S"))
    return sec * 1_000_000_000 + int(frac.ljust(9, "0") or 0)


class CoinApiServer(LocalWsServer):
    """CoinAPI v1 on 127.0.0.1 streaming a random-walk market of CoinAPI symbol ids."""

    heartbeat_interval = 1.0  # CoinAPI: after one second of silence

    def __init__(
        self,
        name: str,
        cfg: SimulatorConfig,
        *,
        api_key: str = "test-key",
        heartbeat_type: str = "hearbeat",
        heartbeat_interval: float | None = None,
        reconnect_within: float = 10.0,
        keep_log: int = 0,
        echo_requests: bool = False,
        **base: Any,  # the shared server's (host, port, ...)
    ) -> None:
        super().__init__(name, cfg, **base)
        if heartbeat_type not in ("hearbeat", "heartbeat"):
            raise ValueError(f"heartbeat_type must be hearbeat or heartbeat: {heartbeat_type!r}")
        self.api_key = api_key
        self.heartbeat_type = heartbeat_type
        if heartbeat_interval is not None:
            self.heartbeat_interval = heartbeat_interval
        self.reconnect_within = reconnect_within
        # errors quote the request they answer, API key included, as some providers' do
        self.echo_requests = echo_requests
        self.log: deque[str] = deque(maxlen=keep_log)  # market messages sent (newest kept)
        self.keep_log = keep_log
        self.auth_failures = 0  # hellos with a wrong or missing key
        self.errors_sent = 0  # error messages (each followed by a close)
        self.forced_closes = 0  # connections closed at a reconnect notice's deadline
        self.hellos = 0
        self.trades_sent = 0
        self._side_n = 0

    # -- requests ------------------------------------------------------------------------------
    async def on_message(self, conn: Conn, text: str) -> None:
        try:
            req = CLIENT_DECODER.decode(text)
        except msgspec.DecodeError as exc:
            await self._fail(conn, f"Invalid request: {exc}", text)
            return
        st = conn.state
        if not st.get("auth"):
            if req.apikey != self.api_key:
                self.auth_failures += 1
                await self._fail(conn, INVALID_KEY, text)
                return
            st["auth"] = True
        if isinstance(req, Unsubscribe):
            self.stats.requests += 1
            if req.subscribe_filter_symbol_id or req.subscribe_filter_exchange_id:
                conn.unsubscribe(self._match(req))
            else:
                st["types"] = st.get("types", set()) - set(req.subscribe_data_type)
            return
        if self.rejecting():
            await self._fail(conn, RATE_LIMITED, text)
            return
        if isinstance(req, Hello):
            self.hellos += 1
            conn.symbols = []
            st["types"] = set()
        st["types"] = st.get("types", set()) | set(req.subscribe_data_type)
        st["heartbeat"] = req.heartbeat
        st.setdefault("seq", {})
        assert isinstance(req, Hello | Subscribe)
        conn.subscribe(self._match(req))

    def _match(self, req: Hello | Subscribe | Unsubscribe) -> list[int]:
        """Market indexes selected by the request's filters (no filter: every symbol)."""
        syms = self.market.symbols
        exact = {f[:-1] for f in req.subscribe_filter_symbol_id if f.endswith("$")}
        prefixes = tuple(f for f in req.subscribe_filter_symbol_id if not f.endswith("$"))
        exchanges = tuple(e + "_" for e in req.subscribe_filter_exchange_id)
        if not (exact or prefixes or exchanges):
            return list(range(len(syms)))
        return [
            i
            for i, s in enumerate(syms)
            if s in exact or (prefixes and s.startswith(prefixes)) or
            (exchanges and s.startswith(exchanges))
        ]  # fmt: skip

    async def _fail(self, conn: Conn, message: str, request: str = "") -> None:
        """An error message, then the close (CoinAPI errors are permanent)."""
        self.errors_sent += 1
        if self.echo_requests and request:
            message = f"{message} (request: {request})"
        with contextlib.suppress(ConnectionClosed):
            await conn.send(msgspec.json.encode({"type": "error", "message": message}).decode())
            await conn.ws.close(1008, message[:100])

    # -- messages ------------------------------------------------------------------------------
    def format_events(self, conn: Conn, ev: EventBatch) -> list[str]:
        st = conn.state
        types = st.get("types", ())
        want_trades = "trade" in types
        want_quotes = "quote" in types
        seqs: dict = st.setdefault("seq", {})
        skip = st.pop("skip", 0)
        skipped: set = st.setdefault("skipped", set()) if skip else set()
        names = self.market.symbols
        out = []
        for i in range(len(ev)):
            quote = bool(ev.is_quote[i])
            if not (want_quotes if quote else want_trades):
                continue
            sym = names[ev.symbol[i]]
            key = (quote, sym)
            seq = seqs.get(key, 0) + 1
            if skip and key not in skipped:
                skipped.add(key)
                seq += skip
            seqs[key] = seq
            tx = iso7(int(ev.ts_exchange[i]))
            tp = iso7(int(ev.ts_provider[i]))
            if quote:
                msg = (
                    f'{{"type":"quote","symbol_id":"{sym}","sequence":{seq},'
                    f'"time_exchange":"{tx}","time_coinapi":"{tp}",'
                    f'"ask_price":{float(ev.ask[i]):.9f},"ask_size":{float(ev.ask_size[i]):.9f},'
                    f'"bid_price":{float(ev.bid[i]):.9f},"bid_size":{float(ev.bid_size[i]):.9f}}}'
                )
            else:
                msg = (
                    f'{{"type":"trade","symbol_id":"{sym}","sequence":{seq},'
                    f'"time_exchange":"{tx}","time_coinapi":"{tp}",'
                    # one uuid per trade of the market, the same on every connection
                    f'"uuid":"00000000-0000-4000-{int(ev.symbol[i]):04d}-{int(ev.trade_id[i]):012d}",'
                    f'"price":{float(ev.price[i]):.9f},"size":{float(ev.size[i]):.9f},'
                    f'"taker_side":"{self._side(bool(ev.taker_buy[i]))}"}}'
                )
                self.trades_sent += 1
            out.append(msg)
        if skip:
            st["skip"] = 0
            st.pop("skipped", None)
        if out:
            st["last_sent"] = time.monotonic()
            if self.keep_log:
                self.log.extend(out)
        return out

    def _side(self, buy: bool) -> str:
        self._side_n += 1
        n = self._side_n
        if n % _UNKNOWN_EVERY == 0:
            return "UNKNOWN"
        side = "BUY" if buy else "SELL"
        return side + "_ESTIMATED" if n % _ESTIMATED_EVERY == 0 else side

    def heartbeat_messages(self, conn: Conn) -> list[str]:
        st = conn.state
        if not st.get("heartbeat"):
            return []
        if time.monotonic() - st.get("last_sent", 0.0) < 0.9 * self.heartbeat_interval:
            return []  # not a second of silence yet
        return [f'{{"type":"{self.heartbeat_type}"}}']

    def malformed_message(self) -> str:
        return '{"type":"trade","symbol_id":"COINBASE_SPOT_BTC_USD","price":77'

    def reconnect_notice(self, conn: Conn) -> str | None:
        within = self.reconnect_within
        before = iso7(time.time_ns() + int(within * 1e9))
        asyncio.get_running_loop().call_later(within, self._deadline, conn)
        return f'{{"type":"reconnect","within_seconds":{within:g},"before_time":"{before}"}}'

    def _deadline(self, conn: Conn) -> None:
        if conn.ws.state is State.OPEN:
            self.forced_closes += 1
            conn.ws.transport.abort()

    async def inject(self, fault: Fault, amount: float = 0.0) -> int:
        if fault is Fault.SEQUENCE_GAP:  # CoinAPI numbers per connection: skip there
            conns = list(self._conns.values())
            for c in conns:
                c.state["skip"] = int(amount or 5)
            return len(conns)
        return await super().inject(fault, amount)
