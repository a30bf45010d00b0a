/**
 * Syslog over TCP: the framing of RFC 6587 and the messages of RFC 5424 and
 * RFC 3164, as rsyslog, syslog-ng, journald's forwarders and util-linux
 * `logger` send them.
 *
 * - {@linkcode SyslogFramer} splits a TCP byte stream into messages. The
 *   framing is detected once per connection from its first byte: a digit
 *   means octet counting (`<len> <msg>`, RFC 6587 §3.4.1), anything else
 *   means newline framing (`<msg>\n`, RFC 6587 §3.4.2).
 * - {@linkcode parseSyslog} parses one message into facility, severity,
 *   timestamp, host, app and text. It never throws: what it cannot parse is
 *   kept in `message`.
 * - {@linkcode parseSyslogTime} reads only the timestamp, fast, for the
 *   server's data path.
 *
 * Pure functions over `Uint8Array`; no I/O.
 *
 * @module
 */

import { MoatError, ProtocolError } from "./errors.ts";

/** Default longest syslog message accepted, in bytes (64 KiB). */
export const DEFAULT_SYSLOG_MAX: number = 64 * 1024;

/**
 * The vault source name of every syslog peer's records; reserved, so that
 * no shipper can send records into it.
 */
export const SYSLOG_SOURCE = "syslog";

/** The two framings of RFC 6587. */
export type SyslogFraming = "octet-counting" | "newline";

/** One parsed syslog message. Fields a message does not carry are undefined. */
export interface SyslogMessage {
  /** Which grammar matched: RFC 5424, RFC 3164, or none (no valid PRI). */
  format: "rfc5424" | "rfc3164" | "unknown";
  /** Facility, 0 to 23 (1, user, when the message has no valid PRI). */
  facility: number;
  /** Severity, 0 (emergency) to 7 (debug); 5, notice, without a valid PRI. */
  severity: number;
  /** The message's own time, milliseconds since the epoch. */
  ts: number | undefined;
  /** HOSTNAME. */
  host: string | undefined;
  /** APP-NAME (RFC 5424) or the TAG without its `[pid]` (RFC 3164). */
  app: string | undefined;
  /** PROCID (RFC 5424) or the `[pid]` of the TAG (RFC 3164). */
  procId: string | undefined;
  /** MSGID (RFC 5424 only). */
  msgId: string | undefined;
  /** STRUCTURED-DATA as sent, e.g. `[origin ip="10.0.0.1"]` (RFC 5424 only). */
  structuredData: string | undefined;
  /** The free-form text, without a leading UTF-8 BOM. */
  message: string;
}

/** Options for {@linkcode parseSyslog} and {@linkcode parseSyslogTime}. */
export interface ParseSyslogOptions {
  /**
   * The receive time, which picks the year of an RFC 3164 timestamp that has
   * none: the current year, or the one before if that would put the message
   * more than 7 days in the future. @default {Date.now()}
   */
  now?: number;
}

/** Options for {@linkcode SyslogFramer}. */
export interface SyslogFramerOptions {
  /** Longest message accepted, in bytes. @default {65536} */
  maxMessage?: number;
}

const LT = 0x3c;
const GT = 0x3e;
const SP = 0x20;
const LF = 0x0a;
const CR = 0x0d;
const ZERO = 0x30;
const NINE = 0x39;

const DOT = 0x2e;
const DASH = 0x2d;
const PLUS = 0x2b;
const COLON = 0x3a;

const MONTHS: ReadonlyMap<string, number> = new Map(
  [
    "Jan",
    "Feb",
    "Mar",
    "Apr",
    "May",
    "Jun",
    "Jul",
    "Aug",
    "Sep",
    "Oct",
    "Nov",
    "Dec",
  ].map((m, i) => [m, i + 1]),
);
const DAYS_IN_MONTH = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];

/** An RFC 3164 TAG and the space after it: `app:`, `app[pid]:` or `app[pid]`. */
const BSD_TAG = /^([^\s:[\]]{1,64})(?:\[([^\s\]]{0,128})\])?(:)? ?/;

const DAY_MS = 86_400_000;

/** First buffer of a message that continues into the next chunk. */
const HELD_MIN = 256;

const UTF8 = new TextDecoder();

/**
 * Splits a syslog TCP stream into messages (RFC 6587). The first byte of the
 * connection picks the framing: a digit means octet counting, anything else
 * newline framing. In both, one trailing LF (or CR LF) of a message is
 * dropped, and empty messages are skipped.
 *
 * Messages are returned as views: into the pushed chunk when a message lies
 * wholly inside it, else into a buffer of its own. Use them before the
 * chunk's buffer is reused. A message that continues into the next chunk is
 * held in a buffer that grows with what arrived, never allocated at the size
 * a count announces. Errors leave the framer unusable: close the connection.
 *
 * @example Octet counting, split across chunks
 * ```ts
 * import { SyslogFramer } from "./syslog.ts";
 * import assert from "node:assert/strict";
 * const framer = new SyslogFramer();
 * const out: Uint8Array[] = [];
 * const te = new TextEncoder();
 * framer.push(te.encode("11 <13>1 - - -5 <13>"), out);
 * framer.push(te.encode("x"), out);
 * assert.equal(framer.framing, "octet-counting");
 * assert.deepEqual(out.map((m) => new TextDecoder().decode(m)), ["<13>1 - - -", "<13>x"]);
 * ```
 */
export class SyslogFramer {
  #max: number;
  #framing: SyslogFraming | undefined;
  /** Octet counting: the count parsed so far, and how many digits it had. */
  #count = 0;
  #digits = 0;
  /** Octet counting: the length of the message being received; 0 between messages. */
  #want = 0;
  /**
   * A message that continues into the next chunk: what arrived of it so far,
   * in a buffer that grows as it fills (never to more than twice that, nor
   * past the message's length), not to the length a count announces.
   */
  #held: Uint8Array | undefined;
  #heldLength = 0;

  /**
   * @param options The message size limit.
   * @throws {RangeError} For a limit that is not a positive integer.
   */
  constructor(options: SyslogFramerOptions = {}) {
    const max = options.maxMessage ?? DEFAULT_SYSLOG_MAX;
    if (!Number.isSafeInteger(max) || max < 1) {
      throw new RangeError(
        `Invalid maxMessage: ${max} is not a positive integer`,
      );
    }
    this.#max = max;
  }

  /** The framing detected from the first byte; undefined before any byte. */
  get framing(): SyslogFraming | undefined {
    return this.#framing;
  }

  /** Bytes of memory held for a message that continues into the next chunk. */
  get heldBytes(): number {
    return this.#held?.length ?? 0;
  }

  /**
   * Takes the next bytes of the stream and appends every message they
   * complete to `out`. On an error, the messages before it are in `out`.
   *
   * @param chunk The next bytes.
   * @param out Receives complete messages.
   * @throws {MoatError} `ERR_SYSLOG_TOO_LARGE` for a message longer than
   * `maxMessage` (detected before it is buffered).
   * @throws {ProtocolError} For a malformed octet count.
   */
  push(chunk: Uint8Array, out: Uint8Array[]): void {
    this.scan(chunk, collect(out));
  }

  /**
   * Like {@linkcode SyslogFramer.prototype.push}, but tells `sink` where
   * each message lies instead of making a view of it: the server's data
   * path, which allocates nothing per message.
   *
   * @param chunk The next bytes.
   * @param sink Told of each complete message, in order.
   * @throws As `push`.
   */
  scan(chunk: Uint8Array, sink: SyslogSink): void {
    if (chunk.length === 0) return;
    if (this.#framing === undefined) {
      this.#framing = isDigit(chunk[0]!) ? "octet-counting" : "newline";
    }
    if (this.#framing === "newline") this.#pushLines(chunk, sink);
    else this.#pushCounted(chunk, sink);
  }

  /**
   * Ends the stream: returns an unterminated last line (newline framing).
   *
   * @param out Receives the last message, if any.
   * @throws {ProtocolError} When the stream ends inside an octet-counted
   * frame.
   */
  end(out: Uint8Array[]): void {
    this.finish(collect(out));
  }

  /**
   * Like {@linkcode SyslogFramer.prototype.end}, with a sink.
   *
   * @param sink Told of the last message, if any.
   * @throws As `end`.
   */
  finish(sink: SyslogSink): void {
    if (this.#framing === "newline") {
      if (this.#heldLength > 0) this.#emitHeld(sink);
      return;
    }
    if (this.#want > 0) {
      throw new ProtocolError(
        `Truncated syslog frame: the stream ended after ${this.#heldLength} of ${this.#want} bytes`,
      );
    }
    if (this.#digits > 0) {
      throw new ProtocolError(
        "Truncated syslog frame: the stream ended inside an octet count",
      );
    }
  }

  #pushLines(chunk: Uint8Array, sink: SyslogSink) {
    let start = 0;
    for (;;) {
      const lf = chunk.indexOf(LF, start);
      if (lf < 0) {
        const rest = chunk.length - start;
        if (rest === 0) return;
        this.#checkLine(this.#heldLength + rest);
        this.#hold(chunk.subarray(start), this.#max + 1);
        return;
      }
      if (this.#heldLength > 0) {
        this.#checkLine(this.#heldLength + lf - start);
        this.#hold(chunk.subarray(start, lf), this.#max + 1);
        this.#emitHeld(sink);
      } else {
        this.#checkLine(lf - start);
        this.#emit(chunk, start, lf, sink);
      }
      start = lf + 1;
    }
  }

  #checkLine(length: number) {
    // A CR before the LF is not part of the message.
    if (length > this.#max + 1) throw tooLarge(length, this.#max, "at least ");
  }

  /**
   * Appends `bytes` to the held message, growing its buffer by doubling (from
   * 256 bytes), never past `cap`: memory follows what arrived, and a sender
   * trickling a byte at a time costs no more than one that sends it whole.
   */
  #hold(bytes: Uint8Array, cap: number) {
    const length = this.#heldLength + bytes.length;
    let held = this.#held;
    if (held === undefined || length > held.length) {
      const size = Math.min(
        cap,
        Math.max(length, 2 * (held?.length ?? 0), HELD_MIN),
      );
      const grown = new Uint8Array(size);
      if (held !== undefined) grown.set(held.subarray(0, this.#heldLength));
      held = this.#held = grown;
    }
    held.set(bytes, this.#heldLength);
    this.#heldLength = length;
  }

  /** Emits the held message and hands its buffer over: the next one gets a buffer of its own. */
  #emitHeld(sink: SyslogSink) {
    const held = this.#held!;
    const length = this.#heldLength;
    this.#held = undefined;
    this.#heldLength = 0;
    this.#emit(held, 0, length, sink);
  }

  #pushCounted(chunk: Uint8Array, sink: SyslogSink) {
    let i = 0;
    while (i < chunk.length) {
      if (this.#want > 0) {
        const n = Math.min(this.#want - this.#heldLength, chunk.length - i);
        this.#hold(chunk.subarray(i, i + n), this.#want);
        i += n;
        if (this.#heldLength === this.#want) {
          this.#want = 0;
          this.#emitHeld(sink);
        }
        continue;
      }
      const b = chunk[i]!;
      if (isDigit(b)) {
        if (this.#digits === 0 && b === ZERO) {
          throw new ProtocolError(
            "Invalid syslog octet count: it starts with 0",
          );
        }
        this.#count = this.#count * 10 + (b - ZERO);
        this.#digits++;
        // Checked at every digit: an endless count is refused at once.
        if (this.#count > this.#max) {
          throw tooLarge(this.#count, this.#max, "at least ");
        }
        i++;
        continue;
      }
      if (this.#digits === 0 && (b === LF || b === CR)) {
        // Some senders end octet-counted frames with a newline anyway.
        i++;
        continue;
      }
      if (b !== SP || this.#digits === 0) {
        throw new ProtocolError(
          `Invalid syslog octet count: expected ${
            this.#digits === 0 ? "a digit" : "a digit or a space"
          }, got ${describeByte(b)}`,
        );
      }
      const count = this.#count;
      this.#count = 0;
      this.#digits = 0;
      i++;
      if (chunk.length - i >= count) {
        // The whole message is inside the chunk: no copy.
        this.#emit(chunk, i, i + count, sink);
        i += count;
      } else {
        // The rest is held as it arrives (see #hold).
        this.#want = count;
      }
    }
  }

  /** Tells `sink` of `bytes[start..end)`, less one trailing LF or CR LF, unless empty. */
  #emit(bytes: Uint8Array, start: number, end: number, sink: SyslogSink) {
    if (end > start && bytes[end - 1] === LF) end--;
    if (end > start && bytes[end - 1] === CR) end--;
    if (end === start) return;
    if (end - start > this.#max) throw tooLarge(end - start, this.#max, "");
    sink.message(bytes, start, end);
  }
}

/**
 * Where {@linkcode SyslogFramer.prototype.scan} puts messages: each is
 * `bytes[start..end)`, valid until the chunk's buffer is reused (or, for a
 * message that spanned chunks, in a buffer of its own).
 */
export interface SyslogSink {
  /**
   * @param bytes The buffer that holds the message.
   * @param start Where it starts.
   * @param end Where it ends.
   */
  message(bytes: Uint8Array, start: number, end: number): void;
}

/** A sink that appends views of the messages to `out`. */
function collect(out: Uint8Array[]): SyslogSink {
  return {
    message(bytes, start, end) {
      out.push(
        start === 0 && end === bytes.length
          ? bytes
          : bytes.subarray(start, end),
      );
    },
  };
}

function tooLarge(size: number, max: number, qualifier: string): MoatError {
  return new MoatError(
    "ERR_SYSLOG_TOO_LARGE",
    `Syslog message of ${qualifier}${size} bytes exceeds the limit of ${max} bytes`,
  );
}

function isDigit(b: number): boolean {
  return b >= ZERO && b <= NINE;
}

function describeByte(b: number): string {
  return b >= 0x21 && b <= 0x7e
    ? `"${String.fromCharCode(b)}"`
    : `byte 0x${b.toString(16).padStart(2, "0")}`;
}

/**
 * Where the last successful `readPri`, `readFraction`, `readRfc3339` or
 * `readBsdTime` stopped: the index after what it read. A module variable,
 * not a returned pair, so that the server's data path allocates nothing per
 * message.
 */
let scanEnd = 0;

/** The byte at `i`, or -1 at or past `end`. */
function byteAt(b: Uint8Array, i: number, end: number): number {
  return i < end ? b[i]! : -1;
}

/**
 * Reads the PRI at `start`: `<N>` with N from 0 to 191, one to three digits,
 * no leading zero. Returns N (and sets `scanEnd` after the `>`), or -1.
 */
function readPri(b: Uint8Array, start: number, end: number): number {
  if (byteAt(b, start, end) !== LT) return -1;
  let pri = 0;
  let i = start + 1;
  for (; i < end && i <= start + 4; i++) {
    const c = b[i]!;
    if (c === GT) break;
    if (!isDigit(c) || (i === start + 2 && b[start + 1] === ZERO)) return -1;
    pri = pri * 10 + (c - ZERO);
  }
  if (i === start + 1 || byteAt(b, i, end) !== GT || pri > 191) return -1;
  scanEnd = i + 1;
  return pri;
}

/** True if an RFC 5424 header (`1 ` after the PRI) starts at `at`. */
function isRfc5424(b: Uint8Array, at: number, end: number): boolean {
  return byteAt(b, at, end) === 0x31 && byteAt(b, at + 1, end) === SP;
}

/** The value of the `n` ASCII digits at `at`, or -1. */
function readDigits(b: Uint8Array, at: number, n: number, end: number): number {
  if (at + n > end) return -1;
  let v = 0;
  for (let i = at; i < at + n; i++) {
    const c = b[i]!;
    if (c < ZERO || c > NINE) return -1;
    v = v * 10 + (c - ZERO);
  }
  return v;
}

/** True at the end of the message or at a space: where a field ends. */
function fieldEnds(b: Uint8Array, i: number, end: number): boolean {
  return i === end || b[i] === SP;
}

/**
 * Reads `.fraction` (1 to `max` digits) at `at` as milliseconds (truncated),
 * and sets `scanEnd` after it. Returns 0 (`scanEnd` at `at`) when there is
 * none, -1 for a bare dot.
 */
function readFraction(
  b: Uint8Array,
  at: number,
  max: number,
  end: number,
): number {
  scanEnd = at;
  if (byteAt(b, at, end) !== DOT) return 0;
  let ms = 0;
  let n = 0;
  let i = at + 1;
  for (; n < max && i < end && isDigit(b[i]!); i++, n++) {
    if (n < 3) ms = ms * 10 + (b[i]! - ZERO);
  }
  if (n === 0) return -1;
  for (let k = n; k < 3; k++) ms *= 10;
  scanEnd = i;
  return ms;
}

function isLeapYear(y: number): boolean {
  return y % 4 === 0 && (y % 100 !== 0 || y % 400 === 0);
}

/** True for a real calendar date and time of day (a leap second allowed). */
function validCivil(
  y: number,
  mo: number,
  d: number,
  h: number,
  mi: number,
  s: number,
): boolean {
  if (y < 1970 || mo < 1 || mo > 12 || d < 1 || h > 23 || mi > 59 || s > 60) {
    return false;
  }
  const days = mo === 2 ? (isLeapYear(y) ? 29 : 28) : DAYS_IN_MONTH[mo - 1]!;
  return d <= days;
}

function checkTs(t: number): number {
  return Number.isSafeInteger(t) && t >= 0 ? t : -1;
}

/**
 * Reads an RFC 3339 timestamp (RFC 5424's TIMESTAMP; fraction up to 9
 * digits tolerated, truncated to milliseconds) at `at`, which must end the
 * field. Returns the time (and sets `scanEnd` after it), or -1.
 */
function readRfc3339(b: Uint8Array, at: number, end: number): number {
  if (
    at + 19 >= end ||
    b[at + 4] !== DASH || b[at + 7] !== DASH || b[at + 10] !== 0x54 ||
    b[at + 13] !== COLON || b[at + 16] !== COLON
  ) {
    return -1;
  }
  const y = readDigits(b, at, 4, end);
  const mo = readDigits(b, at + 5, 2, end);
  const d = readDigits(b, at + 8, 2, end);
  const h = readDigits(b, at + 11, 2, end);
  const mi = readDigits(b, at + 14, 2, end);
  const s = readDigits(b, at + 17, 2, end);
  const frac = readFraction(b, at + 19, 9, end);
  if (frac < 0 || !validCivil(y, mo, d, h, mi, s)) return -1;
  let i = scanEnd;
  let offset = 0;
  const zone = byteAt(b, i, end);
  if (zone === 0x5a) {
    i++;
  } else if (zone === PLUS || zone === DASH) {
    const zh = readDigits(b, i + 1, 2, end);
    const zm = readDigits(b, i + 4, 2, end);
    if (
      byteAt(b, i + 3, end) !== COLON || zh < 0 || zh > 23 || zm < 0 ||
      zm > 59
    ) {
      return -1;
    }
    offset = (zh * 60 + zm) * 60_000 * (zone === DASH ? -1 : 1);
    i += 6;
  } else {
    return -1;
  }
  if (!fieldEnds(b, i, end)) return -1;
  // A leap second is stored as the last millisecond before it.
  const ms = s === 60 ? 59_999 : s * 1000 + frac;
  const ts = checkTs(Date.UTC(y, mo - 1, d, h, mi, 0, ms) - offset);
  scanEnd = i;
  return ts;
}

/** The last RFC 3164 time converted (local time is slow to compute). */
const bsdCache = { key: -1, hour: -1, ts: -1 };

/**
 * Reads an RFC 3164 timestamp at `at`: `Mmm dd hh:mm:ss` (day space-padded
 * or not), optionally a year after the day and a fraction, in the server's
 * local time. Without a year: this year, unless that is more than a week
 * ahead (a December message read in January). Returns the time (and sets
 * `scanEnd` after it), or -1.
 */
function readBsdTime(
  b: Uint8Array,
  at: number,
  end: number,
  now: number,
): number {
  if (at + 3 >= end || b[at + 3] !== SP) return -1;
  const month = monthOf(b[at]!, b[at + 1]!, b[at + 2]!);
  if (month === 0) return -1;
  let i = at + 4;
  if (byteAt(b, i, end) === SP) i++;
  const two = isDigit(byteAt(b, i + 1, end));
  const day = readDigits(b, i, two ? 2 : 1, end);
  i += two ? 2 : 1;
  if (day < 0 || byteAt(b, i, end) !== SP) return -1;
  i++;
  let year = 0;
  if (byteAt(b, i + 4, end) === SP && byteAt(b, i + 2, end) !== COLON) {
    year = readDigits(b, i, 4, end);
    if (year < 0) return -1;
    i += 5;
  }
  if (byteAt(b, i + 2, end) !== COLON || byteAt(b, i + 5, end) !== COLON) {
    return -1;
  }
  const h = readDigits(b, i, 2, end);
  const mi = readDigits(b, i + 3, 2, end);
  const s = readDigits(b, i + 6, 2, end);
  const frac = readFraction(b, i + 8, 6, end);
  if (
    h < 0 || mi < 0 || s < 0 || frac < 0 || !fieldEnds(b, scanEnd, end)
  ) return -1;
  const key = s + 61 * (mi + 60 * (h + 24 * (day + 32 * (month + 13 * year))));
  const hour = Math.floor(now / 3_600_000);
  if (bsdCache.key !== key || bsdCache.hour !== hour) {
    let ts: number;
    if (year !== 0) {
      ts = localTime(year, month, day, h, mi, s);
    } else {
      const thisYear = new Date(now).getFullYear();
      ts = localTime(thisYear, month, day, h, mi, s);
      if (ts < 0 || ts > now + 7 * DAY_MS) {
        ts = localTime(thisYear - 1, month, day, h, mi, s);
      }
    }
    bsdCache.key = key;
    bsdCache.hour = hour;
    bsdCache.ts = ts;
  }
  return bsdCache.ts < 0 ? -1 : bsdCache.ts + frac;
}

/** The month (1 to 12) of a three-letter English abbreviation, or 0. */
function monthOf(a: number, b: number, c: number): number {
  return MONTHS.get(String.fromCharCode(a, b, c)) ?? 0;
}

/** Local time of a calendar date (month 1 to 12), or -1 if it is not one. */
function localTime(
  y: number,
  mo: number,
  d: number,
  h: number,
  mi: number,
  s: number,
): number {
  if (!validCivil(y, mo, d, h, mi, s)) return -1;
  const leap = s === 60;
  return checkTs(
    new Date(y, mo - 1, d, h, mi, leap ? 59 : s, leap ? 999 : 0).getTime(),
  );
}

/**
 * An RFC 3164 timestamp, or an RFC 3339 one where it stands, at `at`; -1 if
 * neither (`scanEnd` after it otherwise).
 */
function readTime3164(
  b: Uint8Array,
  at: number,
  end: number,
  now: number,
): number {
  const ts = readBsdTime(b, at, end, now);
  return ts >= 0 ? ts : readRfc3339(b, at, end);
}

/**
 * Reads only the timestamp of a syslog message: cheaper than
 * {@linkcode parseSyslog}, for the data path.
 *
 * @example
 * ```ts
 * import { parseSyslogTime } from "./syslog.ts";
 * import assert from "node:assert/strict";
 * const msg = new TextEncoder().encode("<34>1 2003-10-11T22:14:15.003Z mymachine su - ID47 - hi");
 * assert.equal(parseSyslogTime(msg), Date.UTC(2003, 9, 11, 22, 14, 15, 3));
 * ```
 *
 * @param bytes One message.
 * @param options The receive time (for RFC 3164's missing year).
 * @returns Milliseconds since the epoch, or undefined if the message has no
 * timestamp that parses.
 */
export function parseSyslogTime(
  bytes: Uint8Array,
  options: ParseSyslogOptions = {},
): number | undefined {
  const ts = syslogTimeAt(
    bytes,
    0,
    bytes.length,
    options.now ?? Date.now(),
  );
  return ts < 0 ? undefined : ts;
}

/**
 * {@linkcode parseSyslogTime} of the message at `bytes[start..end)`, without
 * a view of it or any other allocation: the server's data path.
 *
 * @example
 * ```ts
 * import { syslogTimeAt } from "./syslog.ts";
 * import assert from "node:assert/strict";
 * const buf = new TextEncoder().encode("5 <13>x<13>1 1970-01-01T00:00:01Z h - - - y");
 * assert.equal(syslogTimeAt(buf, 2, 7, Date.now()), -1);
 * assert.equal(syslogTimeAt(buf, 7, buf.length, Date.now()), 1000);
 * ```
 *
 * @param bytes A buffer holding the message.
 * @param start Where the message starts.
 * @param end Where it ends.
 * @param now The receive time (for RFC 3164's missing year).
 * @returns Milliseconds since the epoch, or -1 if the message has no
 * timestamp that parses.
 */
export function syslogTimeAt(
  bytes: Uint8Array,
  start: number,
  end: number,
  now: number,
): number {
  if (readPri(bytes, start, end) < 0) return -1;
  const at = scanEnd;
  if (isRfc5424(bytes, at, end)) return readRfc3339(bytes, at + 2, end);
  return readTime3164(bytes, at, end, now);
}

/**
 * Parses one syslog message: RFC 5424 (`<PRI>1 TIMESTAMP HOST APP PROCID
 * MSGID SD MSG`) or RFC 3164 (`<PRI>Mmm dd hh:mm:ss HOST TAG: MSG`, the host
 * and the timestamp optional, a year after the day or an RFC 3339 timestamp
 * tolerated). A message without a valid PRI is all `message`, with the
 * default user.notice (RFC 3164 §4.3.3). Never throws.
 *
 * @example RFC 5424 with structured data and a BOM
 * ```ts
 * import { parseSyslog } from "./syslog.ts";
 * import assert from "node:assert/strict";
 * const m = parseSyslog(new TextEncoder().encode(
 *   '<165>1 2003-10-11T22:14:15.003Z host app 42 ID47 [ex@32473 a="1"] \uFEFFhello',
 * ));
 * assert.deepEqual([m.facility, m.severity, m.host, m.app, m.procId, m.message],
 *   [20, 5, "host", "app", "42", "hello"]);
 * assert.equal(m.structuredData, '[ex@32473 a="1"]');
 * ```
 *
 * @param bytes One message (without framing).
 * @param options The receive time (for RFC 3164's missing year).
 * @returns The fields.
 */
export function parseSyslog(
  bytes: Uint8Array,
  options: ParseSyslogOptions = {},
): SyslogMessage {
  const msg: SyslogMessage = {
    format: "unknown",
    facility: 1,
    severity: 5,
    ts: undefined,
    host: undefined,
    app: undefined,
    procId: undefined,
    msgId: undefined,
    structuredData: undefined,
    message: "",
  };
  const end = bytes.length;
  const pri = readPri(bytes, 0, end);
  if (pri < 0) {
    msg.message = UTF8.decode(bytes);
    return msg;
  }
  const at = scanEnd;
  msg.facility = pri >> 3;
  msg.severity = pri & 7;
  const text = UTF8.decode(bytes.subarray(at));
  if (isRfc5424(bytes, at, end)) {
    parse5424(text.slice(2), msg);
    const ts = readRfc3339(bytes, at + 2, end);
    msg.ts = ts < 0 ? undefined : ts;
  } else {
    // The timestamp is ASCII: its byte length is its length in `text`.
    const ts = readTime3164(bytes, at, end, options.now ?? Date.now());
    parse3164(text, msg, ts < 0 ? undefined : [ts, scanEnd - at]);
  }
  return msg;
}

function nil(field: string): string | undefined {
  return field === "-" ? undefined : field;
}

function parse5424(text: string, msg: SyslogMessage) {
  msg.format = "rfc5424";
  // TIMESTAMP HOSTNAME APP-NAME PROCID MSGID, each up to the next space.
  const fields: string[] = [];
  let at = 0;
  while (fields.length < 5) {
    const sp = text.indexOf(" ", at);
    if (sp < 0) {
      // Header cut short: keep what is there, the rest is the message.
      fields.push(text.slice(at));
      at = text.length;
      break;
    }
    fields.push(text.slice(at, sp));
    at = sp + 1;
  }
  const [, host, app, procId, msgId] = fields;
  msg.host = host === undefined ? undefined : nil(host);
  msg.app = app === undefined ? undefined : nil(app);
  msg.procId = procId === undefined ? undefined : nil(procId);
  msg.msgId = msgId === undefined ? undefined : nil(msgId);
  if (fields.length < 5) return;
  const sdEnd = structuredDataEnd(text, at);
  if (sdEnd === undefined) {
    // Malformed STRUCTURED-DATA: nothing is dropped, it stays in the message.
    msg.message = stripBom(text.slice(at));
    return;
  }
  const sd = text.slice(at, sdEnd);
  msg.structuredData = nil(sd);
  msg.message = stripBom(text.slice(text[sdEnd] === " " ? sdEnd + 1 : sdEnd));
}

/**
 * Finds where STRUCTURED-DATA starting at `at` ends: `-`, or `[…]` elements
 * whose quoted values may hold `\"`, `\\` and `\]`. Undefined if malformed.
 */
function structuredDataEnd(text: string, at: number): number | undefined {
  if (text[at] === "-") {
    return text.length === at + 1 || text[at + 1] === " " ? at + 1 : undefined;
  }
  let i = at;
  if (text[i] !== "[") return undefined;
  while (text[i] === "[") {
    let quoted = false;
    for (i++;; i++) {
      if (i >= text.length) return undefined;
      const c = text[i];
      if (quoted) {
        if (c === "\\") i++;
        else if (c === '"') quoted = false;
      } else if (c === '"') {
        quoted = true;
      } else if (c === "]") {
        break;
      }
    }
    i++;
  }
  return i === text.length || text[i] === " " ? i : undefined;
}

function stripBom(text: string): string {
  return text.charCodeAt(0) === 0xfeff ? text.slice(1) : text;
}

function parse3164(
  text: string,
  msg: SyslogMessage,
  time: [ts: number, length: number] | undefined,
) {
  msg.format = "rfc3164";
  let rest = text;
  if (time !== undefined) {
    msg.ts = time[0];
    rest = text.slice(time[1] + 1);
    // A HOSTNAME comes first unless the next word is already the TAG.
    const sp = rest.indexOf(" ");
    const word = sp < 0 ? rest : rest.slice(0, sp);
    if (
      word.length > 0 && !word.endsWith(":") && !word.includes("[") && sp >= 0
    ) {
      msg.host = word;
      rest = rest.slice(sp + 1);
    }
  }
  const tag = BSD_TAG.exec(rest);
  if (tag !== null) {
    const [all, app, pid, colon] = tag;
    // A word is a TAG only when a colon or a `[pid]` marks it as one, and a
    // `[pid]` without a colon must end the word.
    const marked = colon !== undefined ||
      (pid !== undefined && (all.endsWith(" ") || all.length === rest.length));
    if (marked) {
      msg.app = app;
      msg.procId = pid || undefined;
      rest = rest.slice(all.length);
    }
  }
  msg.message = rest;
}
