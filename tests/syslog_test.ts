import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { MoatError, ProtocolError } from "../lib/errors.ts";
import {
  parseSyslog,
  parseSyslogTime,
  SyslogFramer,
  type SyslogMessage,
  syslogTimeAt,
} from "../lib/syslog.ts";
import { everySplit } from "./_test_utils.ts";

const te = new TextEncoder();
const td = new TextDecoder();

/** Local-time milliseconds (RFC 3164 timestamps carry no zone). */
function local(y: number, mo: number, d: number, h = 0, mi = 0, s = 0): number {
  return new Date(y, mo - 1, d, h, mi, s).getTime();
}

const NOW = local(2024, 6, 1, 12);

interface ParseCase {
  name: string;
  input: string;
  now?: number;
  want: Partial<SyslogMessage>;
}

const PARSE_CASES: ParseCase[] = [
  {
    name: "RFC 5424 example 1: NIL PROCID and SD, BOM before MSG",
    input:
      "<34>1 2003-10-11T22:14:15.003Z mymachine.example.com su - ID47 - \uFEFF'su root' failed for lonvick on /dev/pts/8",
    want: {
      format: "rfc5424",
      facility: 4,
      severity: 2,
      ts: Date.UTC(2003, 9, 11, 22, 14, 15, 3),
      host: "mymachine.example.com",
      app: "su",
      procId: undefined,
      msgId: "ID47",
      structuredData: undefined,
      message: "'su root' failed for lonvick on /dev/pts/8",
    },
  },
  {
    name: "RFC 5424 example 2: microseconds and a negative offset",
    input:
      "<165>1 2003-08-24T05:14:15.000003-07:00 192.0.2.1 myproc 8710 - - %% It's time to make the do-nuts.",
    want: {
      format: "rfc5424",
      facility: 20,
      severity: 5,
      ts: Date.UTC(2003, 7, 24, 12, 14, 15, 0),
      host: "192.0.2.1",
      app: "myproc",
      procId: "8710",
      msgId: undefined,
      message: "%% It's time to make the do-nuts.",
    },
  },
  {
    name: "RFC 5424 example 3: structured data then a BOM message",
    input:
      '<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 [exampleSDID@32473 iut="3" ' +
      'eventSource="Application" eventID="1011"] \uFEFFAn application event log entry...',
    want: {
      app: "evntslog",
      msgId: "ID47",
      structuredData:
        '[exampleSDID@32473 iut="3" eventSource="Application" eventID="1011"]',
      message: "An application event log entry...",
    },
  },
  {
    name: "RFC 5424 example 4: two SD elements and no MSG",
    input:
      '<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 [exampleSDID@32473 iut="3" ' +
      'eventSource="Application" eventID="1011"][examplePriority@32473 class="high"]',
    want: {
      structuredData:
        '[exampleSDID@32473 iut="3" eventSource="Application" eventID="1011"][examplePriority@32473 class="high"]',
      message: "",
    },
  },
  {
    name: "RFC 5424 SD values with escaped quote, backslash and bracket",
    input: String.raw`<13>1 - h a - - [x@1 v="q\"]\\" w="]"] after`,
    want: {
      structuredData: String.raw`[x@1 v="q\"]\\" w="]"]`,
      message: "after",
      ts: undefined,
    },
  },
  {
    name: "RFC 5424 every field NIL",
    input: "<0>1 - - - - - -",
    want: {
      format: "rfc5424",
      facility: 0,
      severity: 0,
      ts: undefined,
      host: undefined,
      app: undefined,
      procId: undefined,
      msgId: undefined,
      structuredData: undefined,
      message: "",
    },
  },
  {
    name: "RFC 5424 malformed SD stays in the message",
    input: "<13>1 - h a - - [unterminated x",
    want: {
      host: "h",
      app: "a",
      structuredData: undefined,
      message: "[unterminated x",
    },
  },
  {
    name: "RFC 5424 header cut short",
    input: "<13>1 2003-10-11T22:14:15Z host",
    want: {
      format: "rfc5424",
      host: "host",
      app: undefined,
      message: "",
      ts: Date.UTC(2003, 9, 11, 22, 14, 15),
    },
  },
  {
    name: "RFC 5424 month 13 is no timestamp",
    input: "<13>1 2003-13-11T22:14:15Z h a - - - m",
    want: { ts: undefined, message: "m" },
  },
  {
    name: "RFC 5424 30 February is no timestamp",
    input: "<13>1 2023-02-30T00:00:00Z h a - - - m",
    want: { ts: undefined },
  },
  {
    name: "RFC 5424 UTF-8 message",
    input: "<14>1 2024-01-02T03:04:05+01:00 h app 1 - - grüße ✓",
    want: {
      ts: Date.UTC(2024, 0, 2, 2, 4, 5),
      message: "grüße ✓",
      facility: 1,
      severity: 6,
    },
  },
  {
    name: "RFC 3164 example with host; a future date without year is last year",
    input:
      "<34>Oct 11 22:14:15 mymachine su: 'su root' failed for lonvick on /dev/pts/8",
    now: NOW,
    want: {
      format: "rfc3164",
      facility: 4,
      severity: 2,
      ts: local(2023, 10, 11, 22, 14, 15),
      host: "mymachine",
      app: "su",
      procId: undefined,
      message: "'su root' failed for lonvick on /dev/pts/8",
    },
  },
  {
    name: "RFC 3164 space-padded day, IP host, tag with pid",
    input: "<38>Feb  5 17:32:18 10.0.0.99 sshd[1234]: Accepted publickey",
    now: NOW,
    want: {
      ts: local(2024, 2, 5, 17, 32, 18),
      host: "10.0.0.99",
      app: "sshd",
      procId: "1234",
      message: "Accepted publickey",
    },
  },
  {
    name: "RFC 3164 with a year after the day",
    input: "<13>Mar  1 2021 12:00:01 router app: x",
    now: NOW,
    want: {
      ts: local(2021, 3, 1, 12, 0, 1),
      host: "router",
      app: "app",
      message: "x",
    },
  },
  {
    name: "RFC 3164 without host",
    input: "<13>Oct 11 22:14:15 su: hi there",
    now: NOW,
    want: {
      host: undefined,
      app: "su",
      message: "hi there",
      ts: local(2023, 10, 11, 22, 14, 15),
    },
  },
  {
    name: "RFC 3164 without host, tag with pid",
    input: "<78>Jun  1 11:59:00 CRON[42]: (root) CMD (true)",
    now: NOW,
    want: {
      facility: 9,
      severity: 6,
      host: undefined,
      app: "CRON",
      procId: "42",
      message: "(root) CMD (true)",
    },
  },
  {
    name: "RFC 3164 with host but no tag",
    input: "<13>Jun  1 11:59:00 box just words here",
    now: NOW,
    want: {
      host: "box",
      app: undefined,
      message: "just words here",
      ts: local(2024, 6, 1, 11, 59),
    },
  },
  {
    name: "RFC 3164 tag with a pid and no colon",
    input: "<13>Jun  1 11:59:00 host app[7] started",
    now: NOW,
    want: { host: "host", app: "app", procId: "7", message: "started" },
  },
  {
    name: "RFC 3164 tag with a colon and no space",
    input: "<13>Jun  1 11:59:00 host app:started",
    now: NOW,
    want: { host: "host", app: "app", procId: undefined, message: "started" },
  },
  {
    name: "RFC 3164 with an RFC 3339 timestamp",
    input: "<13>2024-01-02T03:04:05.5Z host app: m",
    want: {
      format: "rfc3164",
      ts: Date.UTC(2024, 0, 2, 3, 4, 5, 500),
      host: "host",
      app: "app",
      message: "m",
    },
  },
  {
    name: "RFC 3164 without timestamp: the rest is the message",
    input: "<13>hello world",
    want: {
      format: "rfc3164",
      ts: undefined,
      host: undefined,
      app: undefined,
      message: "hello world",
    },
  },
  {
    name: "RFC 3164 29 February without year picks the last leap year",
    input: "<13>Feb 29 10:00:00 h a: m",
    now: local(2025, 3, 10),
    want: { ts: local(2024, 2, 29, 10) },
  },
  {
    name: "PRI 191 is local7.debug",
    input: "<191>x",
    want: { facility: 23, severity: 7, message: "x" },
  },
  ...[
    "<192>x",
    "<1a>x",
    "<>x",
    "<013>x",
    "13>x",
    "<1234>x",
    "<13",
    "",
    "plain text",
  ].map((input) => ({
    name: `malformed PRI ${
      JSON.stringify(input)
    } is user.notice and all message`,
    input,
    want: {
      format: "unknown" as const,
      facility: 1,
      severity: 5,
      ts: undefined,
      host: undefined,
      message: input,
    },
  })),
];

describe("parseSyslog", () => {
  for (const c of PARSE_CASES) {
    test(`parseSyslog parses ${c.name}`, () => {
      const got = parseSyslog(te.encode(c.input), { now: c.now ?? NOW });
      const picked = Object.fromEntries(
        Object.keys(c.want).map((k) => [k, got[k as keyof SyslogMessage]]),
      );
      assert.deepEqual(picked, c.want);
    });
  }

  test("parseSyslogTime agrees with parseSyslog on every table row", () => {
    for (const c of PARSE_CASES) {
      const bytes = te.encode(c.input);
      const now = c.now ?? NOW;
      assert.equal(
        parseSyslogTime(bytes, { now }),
        parseSyslog(bytes, { now }).ts,
        c.name,
      );
    }
  });

  test("syslogTimeAt reads a message inside a larger buffer as parseSyslogTime reads it alone, never past its end", () => {
    const inputs = [
      ...PARSE_CASES.map((c) => [c.input, c.now ?? NOW] as const),
      // Each of these would parse if the bytes after the end counted.
      ["<13>1 2024-05-01T10:00:00", NOW],
      ["<13>1 2024-05-01T10:00:00+01", NOW],
      ["<13>Jun  1 10:00:0", NOW],
      ["<13", NOW],
    ] as const;
    for (const [input, now] of inputs) {
      const alone = te.encode(input);
      const around = te.encode(`9 <13>${input}Z:00 1 host:00`);
      const start = 6;
      const want = parseSyslogTime(alone, { now }) ?? -1;
      assert.equal(
        syslogTimeAt(around, start, start + alone.length, now),
        want,
        input,
      );
    }
    assert.equal(
      syslogTimeAt(te.encode("<13>1 2024-05-01T10:00:00Z"), 0, 25, NOW),
      -1,
    );
  });

  // Epoch milliseconds worked out apart from Date (Python's calendar), so
  // the conversion is checked against something other than itself.
  const CALENDAR: [string, number | undefined][] = [
    ["1970-01-01T00:00:00Z", 0],
    ["1970-01-01T00:30:00+01:00", undefined], // before the epoch
    ["2000-02-29T00:00:00Z", 951_782_400_000], // a leap century
    ["2000-03-01T00:00:00Z", 951_868_800_000],
    ["2100-02-29T00:00:00Z", undefined], // not a leap year
    ["2024-02-29T12:00:00+12:00", 1_709_164_800_000],
    ["2024-03-01T00:00:00-00:00", 1_709_251_200_000],
    ["2016-12-31T23:59:60Z", 1_483_228_799_999], // a leap second
    ["9999-12-31T23:59:59.999Z", 253_402_300_799_999],
  ];
  for (const [time, want] of CALENDAR) {
    test(`parseSyslogTime reads ${time} as ${want}`, () => {
      const bytes = te.encode(`<13>1 ${time} host app - - - hi`);
      assert.equal(parseSyslogTime(bytes), want);
    });
  }
});

/**
 * Frames `chunks` the way the server does: each chunk is copied into one
 * reused buffer, the messages are read at once, then the buffer is trashed.
 */
function frameAll(
  chunks: readonly Uint8Array[],
  maxMessage?: number,
): { messages: string[]; error?: unknown } {
  const framer = new SyslogFramer(
    maxMessage === undefined ? {} : { maxMessage },
  );
  const scratch = new Uint8Array(Math.max(1, ...chunks.map((c) => c.length)));
  const messages: string[] = [];
  const out: Uint8Array[] = [];
  const drain = () => {
    for (const m of out) messages.push(td.decode(m));
    out.length = 0;
    scratch.fill(0xff);
  };
  try {
    for (const chunk of chunks) {
      scratch.set(chunk);
      try {
        framer.push(scratch.subarray(0, chunk.length), out);
      } finally {
        drain();
      }
    }
    framer.end(out);
    drain();
  } catch (error) {
    return { messages, error };
  }
  return { messages };
}

interface FrameCase {
  name: string;
  input: string;
  max?: number;
  messages: string[];
  /** Expected error class and message pattern. */
  error?: [typeof ProtocolError | typeof MoatError, RegExp];
  /** The error's code, when it is not ERR_PROTOCOL. */
  code?: string;
}

const FRAME_CASES: FrameCase[] = [
  {
    name: "newline framing",
    input: "<13>a\n<13>b\r\n\n<13>c\n",
    messages: ["<13>a", "<13>b", "<13>c"],
  },
  {
    name: "newline framing keeps an unterminated last line",
    input: "<13>a\n<13>b",
    messages: ["<13>a", "<13>b"],
  },
  {
    name: "newline framing: a line of exactly maxMessage with CR LF",
    input: "<1>456789\r\n",
    max: 9,
    messages: ["<1>456789"],
  },
  {
    name: "newline framing refuses a line over maxMessage",
    input: "<1>a\n<1>4567890\n",
    max: 9,
    messages: ["<1>a"],
    error: [
      MoatError,
      /Syslog message of (at least )?1\d bytes exceeds the limit of 9 bytes/,
    ],
    code: "ERR_SYSLOG_TOO_LARGE",
  },
  {
    name: "newline framing refuses an unterminated line over maxMessage",
    input: "<1>a\n<1>45678901234",
    max: 9,
    messages: ["<1>a"],
    error: [MoatError, /exceeds the limit of 9 bytes/],
    code: "ERR_SYSLOG_TOO_LARGE",
  },
  {
    name: "octet counting",
    input: "5 <13>a5 <13>b",
    messages: ["<13>a", "<13>b"],
  },
  {
    name: "octet counting drops one trailing LF in the frame",
    input: "6 <13>a\n7 <13>b\r\n",
    messages: ["<13>a", "<13>b"],
  },
  {
    name: "octet counting tolerates a newline between frames",
    input: "5 <13>a\n5 <13>b",
    messages: ["<13>a", "<13>b"],
  },
  {
    name: "octet counting: a frame of exactly maxMessage",
    input: "9 <1>456789",
    max: 9,
    messages: ["<1>456789"],
  },
  {
    name: "octet counting: LF inside a frame is data",
    input: "9 <13>a\nb\nc1 x",
    messages: ["<13>a\nb\nc", "x"],
  },
  {
    name: "octet counting: a non-digit where a count belongs",
    input: "5 <13>ax 12",
    messages: ["<13>a"],
    error: [
      ProtocolError,
      /Invalid syslog octet count: expected a digit, got "x"/,
    ],
  },
  {
    name: "octet counting: a non-digit inside the count",
    input: "1a <13>",
    messages: [],
    error: [ProtocolError, /expected a digit or a space, got "a"/],
  },
  {
    name: "octet counting: a count with a leading zero",
    input: "05 <13>a",
    messages: [],
    error: [ProtocolError, /starts with 0/],
  },
  {
    name: "octet counting: a count over maxMessage is refused before the body",
    input: "10 <1>",
    max: 9,
    messages: [],
    error: [
      MoatError,
      /Syslog message of at least 10 bytes exceeds the limit of 9 bytes/,
    ],
    code: "ERR_SYSLOG_TOO_LARGE",
  },
  {
    name:
      "octet counting: an overlong count is refused as soon as it passes maxMessage",
    input: "1 x99999999999999999999999 ",
    messages: ["x"],
    error: [
      MoatError,
      /Syslog message of at least 99999 bytes exceeds the limit of 65536 bytes/,
    ],
    code: "ERR_SYSLOG_TOO_LARGE",
  },
  {
    name: "octet counting: truncated body",
    input: "5 <13>a10 <13>",
    messages: ["<13>a"],
    error: [
      ProtocolError,
      /Truncated syslog frame: the stream ended after 4 of 10 bytes/,
    ],
  },
  {
    name: "octet counting: the stream ends inside a count",
    input: "5 <13>a12",
    messages: ["<13>a"],
    error: [ProtocolError, /ended inside an octet count/],
  },
];

describe("SyslogFramer", () => {
  for (const c of FRAME_CASES) {
    test(`SyslogFramer handles ${c.name}, however the input is split`, () => {
      for (const { label, chunks } of everySplit(te.encode(c.input))) {
        const got = frameAll(chunks, c.max);
        assert.deepEqual(got.messages, c.messages, label);
        if (c.error === undefined) {
          assert.equal(got.error, undefined, `${label}: ${got.error}`);
          continue;
        }
        assert.ok(got.error instanceof c.error[0], `${label}: ${got.error}`);
        assert.match((got.error as Error).message, c.error[1], label);
        assert.equal(
          (got.error as MoatError).code,
          c.code ?? "ERR_PROTOCOL",
          label,
        );
      }
    });
  }

  test("SyslogFramer detects the framing from the first byte", () => {
    const octets = new SyslogFramer();
    const lines = new SyslogFramer();
    assert.equal(octets.framing, undefined);
    octets.push(te.encode("3"), []);
    lines.push(te.encode("<"), []);
    assert.equal(octets.framing, "octet-counting");
    assert.equal(lines.framing, "newline");
  });

  test("SyslogFramer.scan tells the sink where each message lies, the messages push returns", () => {
    const stream = te.encode(
      "<13>a\r\n<13>b\n\n<13>" + "c".repeat(300) + "\n<13>d",
    );
    for (const at of [0, 3, 7, 200, stream.length]) {
      const pushed: Uint8Array[] = [];
      const viaPush = new SyslogFramer();
      viaPush.push(stream.subarray(0, at), pushed);
      viaPush.push(stream.subarray(at), pushed);
      viaPush.end(pushed);
      const scanned: string[] = [];
      const sink = {
        message(bytes: Uint8Array, start: number, end: number) {
          assert.ok(0 <= start && start < end && end <= bytes.length);
          scanned.push(td.decode(bytes.subarray(start, end)));
        },
      };
      const viaScan = new SyslogFramer();
      viaScan.scan(stream.subarray(0, at), sink);
      viaScan.scan(stream.subarray(at), sink);
      viaScan.finish(sink);
      assert.deepEqual(
        scanned,
        pushed.map((m) => td.decode(m)),
        `split at ${at}`,
      );
      assert.deepEqual(scanned, [
        "<13>a",
        "<13>b",
        "<13>" + "c".repeat(300),
        "<13>d",
      ]);
    }
  });

  test("SyslogFramer returns views of the chunk for messages inside it", () => {
    const chunk = te.encode("3 abc3 def");
    const out: Uint8Array[] = [];
    new SyslogFramer().push(chunk, out);
    assert.equal(out.length, 2);
    for (const m of out) assert.equal(m.buffer, chunk.buffer);
  });

  test("SyslogFramer frames 10,000 mixed-size messages split into 4 KiB reads", () => {
    const want: string[] = [];
    let octet = "";
    let lines = "";
    for (let i = 0; i < 10_000; i++) {
      const m = `<13>1 - h app - - - msg ${i} ${"é".repeat(i % 300)}`;
      want.push(m);
      octet += `${te.encode(m).length} ${m}`;
      lines += `${m}\n`;
    }
    for (const input of [octet, lines]) {
      const bytes = te.encode(input);
      const chunks: Uint8Array[] = [];
      for (let i = 0; i < bytes.length; i += 4096) {
        chunks.push(bytes.subarray(i, i + 4096));
      }
      const got = frameAll(chunks);
      assert.equal(got.error, undefined);
      assert.deepEqual(got.messages, want);
    }
  });

  test("SyslogFramer holds what arrived of an announced frame, not the size it announces", () => {
    const framer = new SyslogFramer({ maxMessage: 65_536 });
    const out: Uint8Array[] = [];
    const body = "<13>" + "x".repeat(60_000 - 4);
    framer.push(te.encode(`60000 ${body.slice(0, 100)}`), out);
    assert.equal(out.length, 0);
    assert.ok(framer.heldBytes <= 256, `${framer.heldBytes} bytes held`);
    let sent = 100;
    for (; sent < 30_000; sent += 1000) {
      framer.push(te.encode(body.slice(sent, sent + 1000)), out);
      assert.ok(
        framer.heldBytes <= 2 * (sent + 1000),
        `${framer.heldBytes} bytes held for ${sent + 1000}`,
      );
    }
    framer.push(te.encode(body.slice(sent) + "2 ok"), out);
    assert.deepEqual(out.map((m) => new TextDecoder().decode(m)), [body, "ok"]);
    assert.equal(framer.heldBytes, 0);
  });

  test("SyslogFramer keeps a line trickled a byte at a time in one growing buffer", () => {
    const framer = new SyslogFramer({ maxMessage: 10_000 });
    const out: Uint8Array[] = [];
    const line = te.encode("<13>" + "y".repeat(5000 - 4));
    for (let i = 0; i < line.length; i++) {
      framer.push(line.subarray(i, i + 1), out);
    }
    assert.ok(framer.heldBytes >= 5000 && framer.heldBytes <= 8192);
    framer.push(te.encode("\n"), out);
    assert.deepEqual(out, [line]);
    assert.equal(framer.heldBytes, 0);
    // The next line does not overwrite the one handed out.
    framer.push(te.encode("<13>z"), out);
    framer.end(out);
    assert.deepEqual(out.map((m) => m.length), [5000, 5]);
    assert.equal(out[0]![4], 0x79);
  });

  test("SyslogFramer rejects a non-positive maxMessage", () => {
    assert.throws(() => new SyslogFramer({ maxMessage: 0 }), RangeError);
  });
});
